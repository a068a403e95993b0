# Baseline arm: W4A4 LSQ quantization-aware training of the float
# YOLOX-tiny (COCO128, 320 px), starting from its float checkpoint. The
# GABFusion and ADA arms inherit from this file and change only the neck,
# the distiller and the hooks.
_base_ = ['../yolox/yolox_tiny_1xb8-100e_coco128.py']

# Written by `python tools/train.py
# configs/yolox/yolox_tiny_1xb8-100e_coco128.py` (its last epoch); override
# with --cfg-options model.float_checkpoint=PATH.
float_checkpoint = 'work_dirs/yolox_tiny_1xb8-100e_coco128/epoch_100.pth'
float_model = _base_.model

max_epochs = 24
base_lr = 0.001

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='QATDistill',
    architecture=float_model,
    # The float teacher config checks the checkpoint, and in the ADA arms it
    # is the distillation teacher. It stays the float model when the
    # student's neck changes.
    teacher=float_model,
    float_checkpoint=float_checkpoint,
    # Weights: per-channel LSQ; inputs: LSQ+ (YOLOX activations are signed
    # after SiLU); the first conv and the prediction convs stay at 8 bit.
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
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=1,
        T_max=max_epochs - 1,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]

default_hooks = dict(checkpoint=dict(interval=6, max_keep_ckpts=2))

qat_hooks = [
    dict(type='SyncNormHook', priority=48),
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0001,
        update_buffers=True,
        priority=49,
    ),
    dict(type='TeacherValHook'),
    dict(type='StudentCheckpointHook'),
]
custom_hooks = qat_hooks

# The distiller of the ADA arms: ADA on the three neck outputs. The second
# version of the GABFusion paper (arXiv 2511.05898) weighs ADA by 0.01
# under reductions it does not state. With ADALoss's reductions (KL per
# channel, mean over channels, images and levels) a weight of 0.1 makes the
# ADA gradient at the neck outputs about 8% of the detection loss's (0.8% at
# 0.01, see benchmarks/ada_normalization.md). It is not tuned for mAP.
ada_distiller = dict(
    type='ADADistiller',
    student_sources='neck',
    loss_weight=0.1,
    version='v1',
    normalization='softmax',
    temperature=1.0,
    divergence='kl',
)
