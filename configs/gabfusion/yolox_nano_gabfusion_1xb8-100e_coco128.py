# YOLOX-nano on COCO128 with GABFusion (learnable alpha) at the four PAFPN
# concatenations; only model.neck.type and model.neck.fusion_cfg differ
# from the float config.
_base_ = ['../yolox/yolox_nano_1xb8-100e_coco128.py']

model = dict(
    neck=dict(type='GABYOLOXPAFPN', fusion_cfg=dict(mode='learnable'))
)

custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook', interval=4)]
