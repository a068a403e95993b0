# YOLOX-tiny on COCO128 with GABFusion whose alpha follows the branch
# gradient norms (feedback mode); GABFusionHook applies the update.
_base_ = ['./yolox_tiny_gabfusion_1xb8-100e_coco128.py']

model = dict(neck=dict(fusion_cfg=dict(mode='feedback', eta=0.05, beta=0.1)))
