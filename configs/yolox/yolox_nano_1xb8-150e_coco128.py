# Float YOLOX-nano on COCO128 with 150 epochs, the float stage of
# `make demo`: the 100-epoch settings with the cosine schedule stretched.
_base_ = ['./yolox_nano_1xb8-100e_coco128.py']

max_epochs = 150
base_lr = _base_.base_lr

train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    _base_.param_scheduler[0],
    dict(
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=3,
        T_max=max_epochs - 3,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True),
]
