# YOLOv5s on COCO 2017 with YOLOv5's hyp.VOC.yaml optimizer, the setting
# of the GABFusion paper (Wang and Wang, arXiv 2511.05898): batch 64 as
# 8 GPUs x 8 images, 640 px, resize-flip-pad augmentation.
# NOTE: the paper states neither the epochs nor the image size; 300 epochs
# is YOLOv5's COCO schedule. For QAT, start from a local float checkpoint
# through load_from (no URL: the machines are offline).
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    './_base_/yolov5_s.py',
    './_base_/schedule_yolov5_voc_hyp.py',
]

img_scale = (640, 640)  # width, height
max_epochs = 300

# Loss settings of hyp.VOC.yaml for 80 classes at 640 px.
model = dict(
    bbox_head=dict(
        loss_bbox_weight=0.02,
        loss_cls_weight=0.21638,
        loss_obj_weight=0.51728,
        cls_pos_weight=0.5,
        obj_pos_weight=0.67198),
    train_cfg=dict(assigner=dict(anchor_ratio_thr=3.3744)))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114, 114, 114))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

train_dataloader = dict(
    batch_size=8, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=_base_.warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=_base_.final_lr_ratio,
        by_epoch=True,
        begin=_base_.warmup_epochs,
        T_max=max_epochs - _base_.warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True),
]

default_hooks = dict(
    checkpoint=dict(interval=1, max_keep_ckpts=3, save_best='auto'))

# The patience is not given by the paper.
custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0001,
        gamma=2000,
        update_buffers=True,
        priority=49),
    dict(
        type='EarlyStoppingHook',
        monitor='coco/bbox_mAP',
        rule='greater',
        patience=3,
        # Stop when mAP has not risen by 0.1 point (not mmengine's
        # default 0.1, which is 10 points).
        min_delta=0.001),
]
