# W8A8 QAT of YOLOX-tiny with mmrazor's own FX quantization for OpenVINO:
# LSQ fake quantization (mmrazor's LearnableFakeQuantize with LSQ
# observers), per-channel int8 weights and per-tensor uint8 activations,
# driven by mmrazor's LSQ loop.
_base_ = ['./yolox_tiny_w8a8-fx-tensorrt_qat_coco128.py']

global_qconfig = dict(
    w_observer=dict(type='mmrazor.LSQPerChannelObserver'),
    a_observer=dict(type='mmrazor.LSQObserver'),
    w_fake_quant=dict(type='mmrazor.LearnableFakeQuantize'),
    a_fake_quant=dict(type='mmrazor.LearnableFakeQuantize'),
    w_qscheme=dict(
        qdtype='qint8', bit=8, is_symmetry=True, is_symmetric_range=True
    ),
    a_qscheme=dict(qdtype='quint8', bit=8, is_symmetry=True),
)

model = dict(
    quantizer=dict(
        _delete_=True,
        type='OpenVINOQuantizer',
        global_qconfig=global_qconfig,
        tracer=dict(type='CustomTracer'),
    )
)

train_cfg = dict(
    _delete_=True,
    type='mmrazor.LSQEpochBasedLoop',
    max_epochs={{_base_.max_epochs}},
    val_interval=6,
)
