# YOLOv5s, the v6.0 architecture (6x6 stem, C3 blocks, SPPF, PAN neck,
# coupled anchor head), for 80 classes at 640 px. Dataset configs override
# num_classes, the loss weights and the schedule.
_base_ = ['mmdet::_base_/default_runtime.py']

custom_imports = dict(imports=['gabfusion_mm'], allow_failed_imports=False)

num_classes = 80
deepen_factor = 0.33
widen_factor = 0.5
neck_channels = [128, 256, 512]  # [256, 512, 1024] x widen_factor

# SiLU runs out of place: in place, autograd copies each activation input.
model = dict(
    type='SingleStageDetector',
    # YOLOv5 feeds RGB scaled to [0, 1].
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[0.0, 0.0, 0.0],
        std=[255.0, 255.0, 255.0],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='YOLOv5CSPDarknet',
        deepen_factor=deepen_factor,
        widen_factor=widen_factor,
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001),
        act_cfg=dict(type='SiLU', inplace=False)),
    neck=dict(
        type='YOLOv5PAFPN',
        in_channels=neck_channels,
        num_csp_blocks=1,  # round(3 x deepen_factor)
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001),
        act_cfg=dict(type='SiLU', inplace=False)),
    bbox_head=dict(
        type='YOLOv5Head',
        num_classes=num_classes,
        in_channels=neck_channels,
        strides=[8, 16, 32],
        # Loss gains of YOLOv5's hyp.scratch-low.yaml at 640 px with 80
        # classes. YOLOv5 multiplies the class gain by num_classes / 80 and
        # the objectness gain by (image size / 640)^2.
        loss_bbox_weight=0.05,
        loss_obj_weight=1.0,
        loss_cls_weight=0.5,
        obj_level_weights=[4.0, 1.0, 0.4]),
    train_cfg=dict(
        assigner=dict(
            type='YOLOv5Assigner', anchor_ratio_thr=4.0,
            neighbour_margin=0.5)),
    # YOLOv5's validation settings.
    test_cfg=dict(
        multi_label=True,
        score_thr=0.001,
        nms_pre=30000,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=300))

# YOLOv5's ModelEMA: decay 0.9999 * (1 - exp(-updates / 2000)).
custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0001,
        gamma=2000,
        update_buffers=True,
        priority=49),
]

# The head multiplies its losses by the total batch size as YOLOv5 does, so
# learning rates must not be scaled by batch size as well.
auto_scale_lr = dict(enable=False, base_batch_size=64)
