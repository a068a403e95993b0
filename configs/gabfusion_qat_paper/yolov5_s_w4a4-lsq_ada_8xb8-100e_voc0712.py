# + ADA arm (ablation): the LSQ baseline distilled from the float teacher
# with ADA on the three neck outputs; the neck keeps the concatenations.
_base_ = ['./yolov5_s_w4a4-lsq_qat_8xb8-100e_voc0712.py']

model = dict(distiller=_base_.ada_distiller)
