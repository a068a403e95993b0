# YOLOv5s on PASCAL VOC with GABFusion (Wang and Wang, arXiv 2511.05898) at
# the four PAN concatenations, branch weights learned by backpropagation
# (the paper's first version). A float model for GABFusion ablations;
# the QAT arms start from the plain float checkpoint instead.
_base_ = ['./yolov5_s_8xb8-100e_voc0712.py']

model = dict(neck=dict(fusion_cfg=dict(mode='learnable')))

# GABFusionHook logs the branch weights and gradient balance.
custom_hooks = [*_base_.custom_hooks, dict(type='GABFusionHook')]
