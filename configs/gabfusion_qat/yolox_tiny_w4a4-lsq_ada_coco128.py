# + ADA arm: the baseline distilled from the float teacher with ADA on the
# neck outputs.
_base_ = ['./yolox_tiny_w4a4-lsq_qat_coco128.py']

model = dict(distiller=_base_.ada_distiller)
