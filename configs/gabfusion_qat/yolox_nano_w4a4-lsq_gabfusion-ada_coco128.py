# GABFusion + ADA arm on YOLOX-nano: the baseline arm with the student's
# four PAFPN concatenations replaced by GABFusion nodes (learnable branch
# weights) and ADA distillation from the float teacher on the neck outputs.
# The teacher stays the float model.
_base_ = ['./yolox_nano_w4a4-lsq_qat_coco128.py']

model = dict(
    architecture=dict(
        neck=dict(type='GABYOLOXPAFPN', fusion_cfg=dict(mode='learnable'))),
    distiller=_base_.ada_distiller)

# Branch weights and LayerNorm affines are not weight-decayed.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'fusions.': dict(decay_mult=0.0)}))

custom_hooks = _base_.qat_hooks + [dict(type='GABFusionHook')]
