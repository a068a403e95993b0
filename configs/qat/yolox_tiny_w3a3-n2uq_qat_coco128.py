# W3A3 N2UQ QAT of YOLOX-tiny: the W4A4 N2UQ baseline at 3 bits.
_base_ = ['./yolox_tiny_w4a4-n2uq_qat_coco128.py']

model = dict(quantizer=dict(w_bits=3, a_bits=3))
