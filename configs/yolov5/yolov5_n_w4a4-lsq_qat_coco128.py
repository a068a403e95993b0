# W4A4 LSQ quantization-aware training of the float YOLOv5n (COCO128,
# 320 px), starting from its float checkpoint: the baseline arm. Weights:
# per-channel LSQ; conv inputs: LSQ+ (SiLU outputs are signed); the first
# conv and the prediction convs stay at 8 bit.
_base_ = ['./yolov5_n_1xb8-100e_coco128.py']

# Written by `python tools/train.py
# configs/yolov5/yolov5_n_1xb8-100e_coco128.py` (its last epoch); override
# with --cfg-options model.float_checkpoint=PATH.
float_checkpoint = 'work_dirs/yolov5_n_1xb8-100e_coco128/epoch_100.pth'
float_model = dict(_base_.model, _scope_='mmdet')

max_epochs = 24
base_lr = 0.001

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='QATDistill',
    architecture=float_model,
    teacher=float_model,
    float_checkpoint=float_checkpoint,
    quantizer=dict(
        type='TraceFreeQuantizer',
        w_bits=4,
        a_bits=4,
        w_fake_quant=dict(type='LSQFakeQuantize', per_channel=True),
        a_fake_quant=dict(type='LSQPlusFakeQuantize'),
        first_conv=dict(w_bits=8, a_bits=8),
        prediction_convs=dict(w_bits=8, a_bits=8),
    ),
)

train_cfg = dict(max_epochs=max_epochs, val_interval=6)

# Quantizer steps and offsets are not weight-decayed.
optim_wrapper = dict(
    optimizer=dict(lr=base_lr),
    paramwise_cfg=dict(custom_keys={'fake_quant.': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=1,
        T_max=max_epochs - 1,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True),
]

default_hooks = dict(checkpoint=dict(interval=6, max_keep_ckpts=2))

qat_hooks = [
    dict(type='TeacherValHook'),
    dict(type='StudentCheckpointHook'),
]
custom_hooks = [*_base_.custom_hooks, *qat_hooks]
