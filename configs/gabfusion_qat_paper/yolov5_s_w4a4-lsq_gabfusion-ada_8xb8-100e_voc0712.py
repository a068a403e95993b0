# + GABFusion + ADA arm: the W4A4 LSQ baseline with GABFusion nodes
# (learnable branch weights) at the student's four PAN concatenations and
# ADA distillation of the three neck outputs from the float teacher.
_base_ = ['./yolov5_s_w4a4-lsq_qat_8xb8-100e_voc0712.py']

model = dict(
    architecture=dict(neck=dict(fusion_cfg=dict(mode='learnable'))),
    distiller=_base_.ada_distiller,
)

# Branch weights and LayerNorm affines are not weight-decayed.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'fusions.': dict(decay_mult=0.0)})
)

# GABFusionHook logs the branch weights and gradient balance.
custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook')]
