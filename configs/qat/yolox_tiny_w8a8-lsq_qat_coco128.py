# W8A8 LSQ QAT of YOLOX-tiny: the W4A4 LSQ baseline with every conv at 8
# bits, the reference for the low-bit arms.
_base_ = ['./yolox_tiny_w4a4-lsq_qat_coco128.py']

model = dict(quantizer=dict(w_bits=8, a_bits=8))
