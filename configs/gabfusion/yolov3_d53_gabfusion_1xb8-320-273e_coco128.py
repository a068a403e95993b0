# Example: mmdet's YOLOv3 (DarkNet-53, 320 px) with GABFusion at the two
# neck concatenations, trained on COCO128. The backbone starts from random
# weights because its ImageNet checkpoint is a URL that needs a network.
_base_ = ['mmdet::yolo/yolov3_d53_8xb8-320-273e_coco.py']

custom_imports = dict(imports=['gabfusion_mm'], allow_failed_imports=False)

data_root = 'data/coco128/'

model = dict(
    backbone=dict(init_cfg=None),
    neck=dict(type='GABYOLOV3Neck', fusion_cfg=dict(mode='learnable')),
)

train_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='images/train2017/'),
    )
)
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='images/val2017/'),
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

custom_hooks = [dict(type='GABFusionHook', interval=4)]
auto_scale_lr = dict(base_batch_size=8)
