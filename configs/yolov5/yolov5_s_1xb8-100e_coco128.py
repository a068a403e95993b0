# YOLOv5s trained from scratch on COCO128 at 320 px on a CPU.
_base_ = ['./yolov5_n_1xb8-100e_coco128.py']

neck_channels = [128, 256, 512]  # [256, 512, 1024] x 0.5

model = dict(
    backbone=dict(widen_factor=0.5),
    neck=dict(in_channels=neck_channels),
    bbox_head=dict(in_channels=neck_channels))
