# Float YOLOX-tiny trained from scratch on COCO128 at 320 px on a CPU.
# Inherits mmdet's YOLOX-tiny and overrides data, input size, schedule and
# the hooks that need YOLOX's Mosaic dataset wrapper.
_base_ = ['mmdet::yolox/yolox_tiny_8xb8-300e_coco.py']

custom_imports = dict(imports=['gabfusion_mm'], allow_failed_imports=False)

dataset_type = 'CocoDataset'
data_root = 'data/coco128/'
img_scale = (320, 320)  # width, height
max_epochs = 100
base_lr = 0.01

# No multi-scale batch resize: the fixed 320 px input keeps a CPU epoch short.
model = dict(data_preprocessor=dict(batch_augments=None))

# Resize, flip and pad only: Mosaic and RandomAffine stop a model trained
# from scratch from fitting 128 images within a CPU schedule.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114, 114, 114))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='images/train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=1),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='images/val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=25)

optim_wrapper = dict(optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(
        type='mmdet.QuadraticWarmupLR',
        by_epoch=True,
        begin=0,
        end=3,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=3,
        T_max=max_epochs - 3,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True),
]

default_hooks = dict(
    logger=dict(interval=4),
    checkpoint=dict(interval=10, max_keep_ckpts=2, save_last=True))

# YOLOXModeSwitchHook is dropped: it switches off Mosaic, which this
# pipeline does not use, and it requires the MultiImageMixDataset wrapper.
custom_hooks = [
    dict(type='SyncNormHook', priority=48),
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0001,
        update_buffers=True,
        priority=49),
]

auto_scale_lr = dict(base_batch_size=8)
