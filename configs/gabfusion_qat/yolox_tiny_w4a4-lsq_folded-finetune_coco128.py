# Short fine-tune after the GABFusion fold (YOLOX-tiny, W4A4 LSQ). The fold
# leaves the stock YOLOXPAFPN, so the folded student has exactly the
# baseline arm's architecture. This config trains it with the task loss
# only, Adam at lr 2e-5 (the deployment recipe of Wang and Wang, arXiv
# 2511.05898). Set load_from to the checkpoint written by
# tools/deploy/fold_gabfusion.py:
#   python tools/train.py THIS_CONFIG \
#       --cfg-options load_from=FOLDED.pth model.float_checkpoint=FLOAT.pth
_base_ = ['./yolox_tiny_w4a4-lsq_qat_coco128.py']

max_epochs = 3

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='Adam', lr=2e-5, betas=(0.9, 0.999),
        weight_decay=0.0))
# Constant learning rate.
param_scheduler = []

default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))

# No EMA: the evaluated weights are the fine-tuned ones.
custom_hooks = [
    dict(type='SyncNormHook', priority=48),
    dict(type='StudentCheckpointHook'),
]
