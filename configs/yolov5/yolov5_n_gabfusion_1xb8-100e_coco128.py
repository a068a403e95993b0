# YOLOv5n on COCO128 with GABFusion (Wang and Wang, arXiv 2511.05898) at
# the four PAN concatenations, branch weights learned by backpropagation
# (the paper's first version). GABFusion corrects a quantization effect, so
# QAT configs inherit this one; in float training it is expected to gain
# nothing.
_base_ = ['./yolov5_n_1xb8-100e_coco128.py']

model = dict(neck=dict(fusion_cfg=dict(mode='learnable')))

# GABFusionHook logs the branch weights and gradient balance.
custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook', interval=4)]
