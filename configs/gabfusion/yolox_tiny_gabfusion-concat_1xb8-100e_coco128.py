# YOLOX-tiny on COCO128 with the plain concatenation (identical to the float
# config's model and state dict) and GABFusionHook, which measures the
# branch gradient imbalance that GABFusion corrects.
_base_ = ['./yolox_tiny_gabfusion_1xb8-100e_coco128.py']

model = dict(neck=dict(fusion_cfg=dict(_delete_=True, mode='concat')))
