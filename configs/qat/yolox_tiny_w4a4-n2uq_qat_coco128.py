# W4A4 N2UQ QAT of YOLOX-tiny. Conv inputs: N2UQ (learned non-uniform
# thresholds, uniform output levels, generalized STE); weights: uniform
# levels with a learned step after per-channel standardization. The first
# conv and the prediction convs stay at 8 bit with uniform quantizers
# (LSQ weights, LSQ+ inputs), which export to QuantizeLinear directly.
_base_ = ['./yolox_tiny_w4a4-lsq_qat_coco128.py']

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
