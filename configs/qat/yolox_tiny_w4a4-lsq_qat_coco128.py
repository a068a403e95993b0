# W4A4 LSQ quantization-aware training of the float YOLOX-tiny (COCO128,
# 320 px) with the trace-free quantizer and mmrazor's QAT loop. Weights use
# per-channel LSQ. Conv inputs use LSQ+, because activations after SiLU go
# down to about -0.28 and the range needs an offset. The first conv and the
# prediction convs stay at 8 bit. The other trace-free QAT baselines in
# this folder inherit from this file.
_base_ = ['../yolox/yolox_tiny_1xb8-100e_coco128.py']

# Written by `python tools/train.py
# configs/yolox/yolox_tiny_1xb8-100e_coco128.py` (its last epoch); override
# with --cfg-options model.float_checkpoint=PATH. Without a checkpoint the
# algorithm raises unless model.allow_random_init=True. tools/test.py
# loads a QAT checkpoint over these weights, so there the float checkpoint
# only has to exist (or pass model.float_checkpoint=None
# model.allow_random_init=True).
float_checkpoint = 'work_dirs/yolox_tiny_1xb8-100e_coco128/epoch_100.pth'

max_epochs = 24
base_lr = 0.001

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='DetectorQAT',
    architecture=dict(_base_.model, _scope_='mmdet'),
    float_checkpoint=float_checkpoint,
    quantizer=dict(
        type='TraceFreeQuantizer',
        w_bits=4,
        a_bits=4,
        w_fake_quant=dict(type='LSQFakeQuantize', per_channel=True),
        a_fake_quant=dict(type='LSQPlusFakeQuantize'),
        first_conv=dict(w_bits=8, a_bits=8),
        prediction_convs=dict(w_bits=8, a_bits=8),
        fold_bn=False,
        # torch.compile fuses each fake quantizer; on a 2-core CPU it cut
        # the step time of every W4A4 baseline (benchmarks/qat_step.md).
        # The first step compiles: about 10 s more with inductor's disk
        # cache warm, longer on a fresh machine. Without a working compiler
        # the fake quantizers fall back to eager mode.
        use_compile=True,
    ),
)

# mmrazor's loop switches fake quantization and observers each epoch; an
# enabled observer lets each fake quantizer initialize from its first
# training batch. The quantized model is validated with mmengine's ValLoop
# (QATValLoop expects a separate float architecture).
train_cfg = dict(
    _delete_=True,
    type='mmrazor.QATEpochBasedLoop',
    max_epochs=max_epochs,
    val_interval=6,
)

# Quantizer steps, offsets and thresholds are not weight-decayed.
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
