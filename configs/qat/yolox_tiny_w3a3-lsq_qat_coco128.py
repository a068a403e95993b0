# W3A3 LSQ QAT of YOLOX-tiny: the W4A4 LSQ baseline at 3 bits.
_base_ = ['./yolox_tiny_w4a4-lsq_qat_coco128.py']

model = dict(quantizer=dict(w_bits=3, a_bits=3))
