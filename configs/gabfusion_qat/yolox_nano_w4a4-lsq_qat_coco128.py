# Baseline arm on YOLOX-nano: W4A4 LSQ quantization-aware training of the
# float YOLOX-nano (COCO128, 320 px) from its float checkpoint. The
# settings are those of the YOLOX-tiny baseline arm; only the detector
# sizes and the float checkpoint differ. The GABFusion + ADA arm inherits
# from this file.
_base_ = ['./yolox_tiny_w4a4-lsq_qat_coco128.py']

# Written by `python tools/train.py
# configs/yolox/yolox_nano_1xb8-150e_coco128.py` (its last epoch); override
# with --cfg-options model.float_checkpoint=PATH.
float_checkpoint = 'work_dirs/yolox_nano_1xb8-150e_coco128/epoch_150.pth'

# The sizes of configs/yolox/yolox_nano_1xb8-100e_coco128.py.
nano = dict(
    backbone=dict(deepen_factor=0.33, widen_factor=0.25, use_depthwise=True),
    neck=dict(
        in_channels=[64, 128, 256],
        out_channels=64,
        num_csp_blocks=1,
        use_depthwise=True),
    bbox_head=dict(in_channels=64, feat_channels=64, use_depthwise=True))

model = dict(
    architecture=nano, teacher=nano, float_checkpoint=float_checkpoint)
