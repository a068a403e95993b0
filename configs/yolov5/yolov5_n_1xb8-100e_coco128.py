# YOLOv5n trained from scratch on COCO128 at 320 px on a CPU: the YOLOv5s
# model narrowed to widen_factor 0.25, with YOLOv5's default optimizer
# (hyp.scratch-low.yaml) and the COCO128 resize-flip-pad pipeline.
_base_ = ['../_base_/datasets/coco128.py', './_base_/yolov5_s.py']

img_scale = (320, 320)  # width, height; matches the dataset base
max_epochs = 100
base_lr = 0.01
neck_channels = [64, 128, 256]  # [256, 512, 1024] x 0.25

model = dict(
    backbone=dict(widen_factor=0.25),
    neck=dict(in_channels=neck_channels),
    bbox_head=dict(
        in_channels=neck_channels,
        # YOLOv5 scales the objectness gain by (image size / 640)^2.
        loss_obj_weight=1.0 * (img_scale[0] / 640)**2))

train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=25)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# YOLOv5's SGD: Nesterov momentum 0.937, weight decay 5e-4 on convolution
# weights only.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='SGD', lr=base_lr, momentum=0.937, weight_decay=0.0005,
        nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))

# Warm-up for 3 epochs, then YOLOv5's default linear decay to 0.01 x lr.
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=3,
        convert_to_iter_based=True),
    dict(
        type='LinearLR',
        start_factor=1.0,
        end_factor=0.01,
        by_epoch=True,
        begin=3,
        end=max_epochs,
        convert_to_iter_based=True),
]

default_hooks = dict(
    logger=dict(interval=4),
    checkpoint=dict(interval=10, max_keep_ckpts=2, save_last=True))
