# Optimizer and schedule of YOLOv5's hyp.VOC.yaml, the settings the
# GABFusion paper (Wang and Wang, arXiv 2511.05898) reports for all its
# runs: SGD lr 0.00334 with Nesterov momentum 0.74832, weight decay
# 0.00025 on convolution weights only, a one-cycle (cosine) decay to
# 0.15135 x lr, batch 64 (8 GPUs x 8 images), early stopping on validation
# mAP.
base_lr = 0.00334
final_lr_ratio = 0.15135
warmup_epochs = 3.3835
max_epochs = 100

train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='SGD',
        lr=base_lr,
        momentum=0.74832,
        weight_decay=0.00025,
        nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))

# NOTE: during warm-up YOLOv5 also lowers the bias learning rate from
# 0.18657 and raises the momentum from 0.59462. Only the learning-rate
# warm-up is reproduced here.
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=final_lr_ratio,
        by_epoch=True,
        begin=warmup_epochs,
        T_max=max_epochs - warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True),
]
