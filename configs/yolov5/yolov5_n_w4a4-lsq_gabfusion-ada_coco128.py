# + GABFusion + ADA arm of the YOLOv5n W4A4 LSQ baseline: the student's four
# PAN concatenations become GABFusion nodes (learnable branch weights) and
# the float teacher distils the neck outputs with ADA.
_base_ = ['./yolov5_n_w4a4-lsq_qat_coco128.py']

model = dict(
    architecture=dict(neck=dict(fusion_cfg=dict(mode='learnable'))),
    distiller=dict(
        type='ADADistiller',
        student_sources='neck',
        loss_weight=0.1,
        version='v1',
        normalization='softmax',
        temperature=1.0,
        divergence='kl',
    ),
)

# Branch weights and LayerNorm affines are not weight-decayed.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'fusions.': dict(decay_mult=0.0)}))

custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook')]
