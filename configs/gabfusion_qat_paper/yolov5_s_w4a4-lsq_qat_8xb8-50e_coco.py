# Baseline arm at the scale of the GABFusion paper (Wang and Wang, arXiv
# 2511.05898). It runs W4A4 LSQ quantization-aware training of the float
# YOLOv5s on COCO 2017 (train2017, val2017, 640 px) with batch 64 as 8 GPUs
# x 8 images. The optimizer is YOLOv5's hyp.VOC.yaml, inherited from the
# float config: SGD lr 0.00334, momentum 0.74832, weight decay 0.00025 and
# a one-cycle decay to 0.15135 x lr. The COCO arms of this folder (PACT,
# N2UQ, GABFusion + ADA) inherit from this file.
_base_ = ['../yolov5/yolov5_s_8xb8-300e_coco.py']

# The float checkpoint of `configs/yolov5/yolov5_s_8xb8-300e_coco.py`.
# mmengine saves its best evaluation as best_coco_bbox_mAP_epoch_<N>.pth
# (EMA weights). Link that file as best.pth in the same folder, or
# override with --cfg-options model.float_checkpoint=PATH. Building the
# model raises FileNotFoundError while the file is missing.
float_checkpoint = 'work_dirs/yolov5_s_8xb8-300e_coco/best.pth'
float_model = dict(_base_.model, _scope_='mmdet')

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='QATDistill',
    architecture=float_model,
    # The float teacher config checks the checkpoint, and in the ADA arms it
    # is the distillation teacher. It stays the float model when the
    # student's neck changes.
    teacher=float_model,
    float_checkpoint=float_checkpoint,
    # Weights use per-channel LSQ. Conv inputs use LSQ+, because SiLU
    # outputs reach about -0.28 and the range needs an offset. The paper
    # does not say which layers keep a higher precision, so the first conv
    # and the prediction convs stay at 8 bit, the common practice.
    quantizer=dict(
        type='TraceFreeQuantizer',
        w_bits=4,
        a_bits=4,
        w_fake_quant=dict(type='LSQFakeQuantize', per_channel=True),
        a_fake_quant=dict(type='LSQPlusFakeQuantize'),
        first_conv=dict(w_bits=8, a_bits=8),
        prediction_convs=dict(w_bits=8, a_bits=8),
    ),
)

# NOTE: the paper does not state the QAT epochs. 50 epochs (one sixth of
# the float schedule) is an upper bound chosen here, and early stopping on
# validation mAP ends the run, as in the paper. The warm-up and the
# one-cycle decay are hyp.VOC.yaml's, fitted to the 50 epochs.
max_epochs = 50
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=_base_.warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=_base_.final_lr_ratio,
        by_epoch=True,
        begin=_base_.warmup_epochs,
        T_max=max_epochs - _base_.warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]

# Quantizer steps, offsets and thresholds are not weight-decayed.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'fake_quant.': dict(decay_mult=0.0)})
)

default_hooks = dict(
    checkpoint=dict(interval=1, max_keep_ckpts=3, save_best='auto')
)

# YOLOv5's EMA, early stopping on the student's validation mAP, the float
# teacher's mAP once before training, and a student-only checkpoint at the
# end. The patience is not given by the paper. min_delta is in mAP units
# (0 to 1), so 0.001 counts a gain of 0.1 point. EarlyStoppingHook's
# default of 0.1 would need 10 points.
qat_hooks = [
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0001,
        gamma=2000,
        update_buffers=True,
        priority=49,
    ),
    dict(
        type='EarlyStoppingHook',
        monitor='coco/bbox_mAP',
        rule='greater',
        min_delta=0.001,
        patience=5,
    ),
    dict(type='TeacherValHook'),
    dict(type='StudentCheckpointHook'),
]
custom_hooks = qat_hooks

# The distiller of the ADA arms: ADA v1 on the three neck outputs with the
# KL divergence, which the paper found suited to LSQ. The loss weight is
# that of configs/gabfusion_qat. With ADALoss's reductions, 0.1 makes the
# ADA gradient at the neck outputs about 8% of the detection loss's on
# YOLOX-tiny (benchmarks/ada_normalization.md). It is not tuned for mAP.
ada_distiller = dict(
    type='ADADistiller',
    student_sources='neck',
    loss_weight=0.1,
    version='v1',
    normalization='softmax',
    temperature=1.0,
    divergence='kl',
)
