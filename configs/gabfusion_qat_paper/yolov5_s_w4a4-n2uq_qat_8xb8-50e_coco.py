# Baseline arm: W4A4 N2UQ QAT of the float YOLOv5s on COCO 2017. Conv
# inputs use N2UQ (learned non-uniform thresholds, uniform output levels,
# generalized STE). Weights use uniform levels with a learned step after
# per-channel standardization. The first conv and the prediction convs
# stay at 8 bit with uniform quantizers (LSQ weights, LSQ+ inputs), which
# export to QuantizeLinear directly.
_base_ = ['./yolov5_s_w4a4-lsq_qat_8xb8-50e_coco.py']

uniform_8bit = dict(
    w_bits=8,
    a_bits=8,
    w_fake_quant=dict(type='LSQFakeQuantize', per_channel=True),
    a_fake_quant=dict(type='LSQPlusFakeQuantize'),
)

model = dict(
    quantizer=dict(
        w_fake_quant=dict(_delete_=True, type='N2UQWeightFakeQuantize'),
        a_fake_quant=dict(_delete_=True, type='N2UQFakeQuantize'),
        first_conv=uniform_8bit,
        prediction_convs=uniform_8bit,
    )
)

# The ADA arms of N2UQ use the Jensen-Shannon divergence, which the paper
# found suited to N2UQ. On YOLOX-tiny, JS gave about 1/12 of KL's ADA
# gradient at the neck outputs (benchmarks/ada_normalization.md), so the
# weight is 1.0 to keep ADA's share of the gradient near that of the KL
# arms (about 7% against 8%). It is not tuned for mAP.
ada_distiller = dict(divergence='js', loss_weight=1.0)
