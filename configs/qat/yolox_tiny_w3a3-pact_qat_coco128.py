# W3A3 PACT QAT of YOLOX-tiny: the W4A4 PACT baseline at 3 bits.
_base_ = ['./yolox_tiny_w4a4-pact_qat_coco128.py']

model = dict(quantizer=dict(w_bits=3, a_bits=3))
