# YOLOv5s on PASCAL VOC (07+12 trainval, 07 test) with YOLOv5's
# hyp.VOC.yaml, the setting of the GABFusion paper (Wang and Wang, arXiv
# 2511.05898): batch 64 as 8 GPUs x 8 images, 640 px.
# NOTE: the paper trains from float checkpoints of the target data and
# states neither the epochs nor the image size. Set load_from to a local
# checkpoint (no URL: the machines are offline), for example one trained
# with the COCO config of this folder.
_base_ = [
    '../_base_/datasets/voc0712.py',
    './_base_/yolov5_s.py',
    './_base_/schedule_yolov5_voc_hyp.py',
]

num_classes = 20

# Loss settings of hyp.VOC.yaml: gains box 0.02, cls 0.21638 (x 20 / 80
# classes, as YOLOv5 scales it), obj 0.51728 (x (640 / 640)^2), BCE
# positive weights cls 0.5 and obj 0.67198, anchor ratio limit 3.3744.
model = dict(
    bbox_head=dict(
        num_classes=num_classes,
        loss_bbox_weight=0.02,
        loss_cls_weight=0.21638 * num_classes / 80,
        loss_obj_weight=0.51728,
        cls_pos_weight=0.5,
        obj_pos_weight=0.67198),
    train_cfg=dict(assigner=dict(anchor_ratio_thr=3.3744)))

train_dataloader = dict(batch_size=8, num_workers=4)
val_dataloader = dict(batch_size=8, num_workers=4)
test_dataloader = val_dataloader

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
        monitor='pascal_voc/mAP',
        rule='greater',
        patience=20,
        # Stop when mAP has not risen by 0.1 point (not mmengine's
        # default 0.1, which is 10 points).
        min_delta=0.001),
]
