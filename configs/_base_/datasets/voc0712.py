# PASCAL VOC in the standard VOCdevkit layout: train on VOC2007 trainval +
# VOC2012 trainval, test on VOC2007 test, VOC mAP at IoU 0.5.
#   data/VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages}
#   data/VOCdevkit/VOC2012/{Annotations,ImageSets/Main,JPEGImages}
dataset_type = 'VOCDataset'
data_root = 'data/VOCdevkit/'
img_scale = (640, 640)  # width, height
backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114, 114, 114))),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=(114, 114, 114))),
    # Annotations are loaded after the resize so evaluation uses the
    # original boxes.
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]


def voc_split(year: str, split: str, test_mode: bool = False) -> dict:
    """Dataset dict for one VOC year and ImageSets/Main split."""
    return dict(
        type=dataset_type,
        data_root=data_root,
        ann_file=f'VOC{year}/ImageSets/Main/{split}.txt',
        data_prefix=dict(sub_data_root=f'VOC{year}/'),
        filter_cfg=dict(filter_empty_gt=not test_mode, min_size=1),
        test_mode=test_mode,
        pipeline=test_pipeline if test_mode else train_pipeline,
        backend_args=backend_args)


train_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='ConcatDataset',
        # The two years' metainfo differ only in dataset_type ('VOC2007' or
        # 'VOC2012'), which ConcatDataset must ignore to accept them.
        ignore_keys=['dataset_type'],
        datasets=[voc_split('2007', 'trainval'),
                  voc_split('2012', 'trainval')]))
val_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=voc_split('2007', 'test', test_mode=True))
test_dataloader = val_dataloader

# 'area' integrates the whole precision-recall curve (the VOC2010+ and
# YOLOv5 convention); '11points' gives the VOC2007 number.
val_evaluator = dict(type='VOCMetric', metric='mAP', eval_mode='area')
test_evaluator = val_evaluator
