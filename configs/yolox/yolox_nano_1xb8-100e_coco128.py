# Float YOLOX-nano on COCO128: the YOLOX-tiny COCO128 settings with mmdet's
# nano model (depthwise convolutions, widen factor 0.25).
_base_ = ['./yolox_tiny_1xb8-100e_coco128.py']

model = dict(
    backbone=dict(deepen_factor=0.33, widen_factor=0.25, use_depthwise=True),
    neck=dict(
        in_channels=[64, 128, 256],
        out_channels=64,
        num_csp_blocks=1,
        use_depthwise=True),
    bbox_head=dict(in_channels=64, feat_channels=64, use_depthwise=True))
