# + GABFusion arm (ablation): the LSQ baseline with the student's four PAN
# concatenations replaced by GABFusion nodes (learnable branch weights,
# per-pixel LayerNorm). No distillation loss is added, so no teacher is
# kept. The float checkpoint loads into the student, whose fusion
# parameters keep their initial values.
_base_ = ['./yolov5_s_w4a4-lsq_qat_8xb8-100e_voc0712.py']

model = dict(architecture=dict(neck=dict(fusion_cfg=dict(mode='learnable'))))

# Branch weights and LayerNorm affines are not weight-decayed.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'fusions.': dict(decay_mult=0.0)})
)

# GABFusionHook logs the branch weights and gradient balance.
custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook')]
