# W8A8 QAT of YOLOX-tiny with mmrazor's own FX quantization for TensorRT:
# per-channel symmetric int8 weights and per-tensor int8 activations with
# min/max observers (torch's FakeQuantize). Only the 'tensor' mode is
# traced; the head's loss and predictions run eagerly on the traced
# outputs.
_base_ = ['../yolox/yolox_tiny_1xb8-100e_coco128.py']

# Override with --cfg-options model.float_checkpoint=PATH.
float_checkpoint = 'work_dirs/yolox_tiny_1xb8-100e_coco128/epoch_100.pth'

max_epochs = 12
base_lr = 0.001

global_qconfig = dict(
    w_observer=dict(type='mmrazor.PerChannelMinMaxObserver'),
    a_observer=dict(type='mmrazor.MovingAverageMinMaxObserver'),
    w_fake_quant=dict(type='mmrazor.FakeQuantize'),
    a_fake_quant=dict(type='mmrazor.FakeQuantize'),
    w_qscheme=dict(
        qdtype='qint8', bit=8, is_symmetry=True, is_symmetric_range=True
    ),
    a_qscheme=dict(
        qdtype='quint8', bit=8, is_symmetry=True, averaging_constant=0.1
    ),
)

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='DetectorQAT',
    architecture=dict(_base_.model, _scope_='mmdet'),
    float_checkpoint=float_checkpoint,
    input_shapes=(1, 3, 320, 320),
    quantizer=dict(
        type='TensorRTQuantizer',
        global_qconfig=global_qconfig,
        tracer=dict(type='CustomTracer'),
    ),
)

# Rebuilds the traced graph after the model moves to its device.
model_wrapper_cfg = dict(
    type='mmrazor.MMArchitectureQuantDDP',
    broadcast_buffers=False,
    find_unused_parameters=True,
)

train_cfg = dict(
    _delete_=True,
    type='mmrazor.QATEpochBasedLoop',
    max_epochs=max_epochs,
    val_interval=6,
)
# Reports the quantized graph ('qat.' metrics) and the float detector
# ('original.' metrics).
val_cfg = dict(_delete_=True, type='mmrazor.QATValLoop')

# The traced graph shares its parameters with the float architecture, and
# a paramwise_cfg would put each shared parameter in two groups.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='SGD', lr=base_lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    ),
)
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=0,
        T_max=max_epochs,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]

default_hooks = dict(checkpoint=dict(interval=6, max_keep_ckpts=2))
# The float config's EMA and SyncNorm hooks are left out because mmrazor's
# loops validate the traced graph, which contains the fused modules.
custom_hooks = []
