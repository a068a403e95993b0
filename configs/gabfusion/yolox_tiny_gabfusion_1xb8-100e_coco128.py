# YOLOX-tiny on COCO128 with GABFusion (learnable alpha) at the four PAFPN
# concatenations. The model differs from the float config only in
# model.neck.type and model.neck.fusion_cfg; GABFusionHook logs the branch
# gradient balance and plots it into the work directory.
_base_ = ['../yolox/yolox_tiny_1xb8-100e_coco128.py']

model = dict(
    neck=dict(type='GABYOLOXPAFPN', fusion_cfg=dict(mode='learnable'))
)

custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook', interval=4)]
