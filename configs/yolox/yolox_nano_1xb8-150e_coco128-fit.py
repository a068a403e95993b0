# Fit protocol for the 150-epoch YOLOX-nano: the same training, evaluated
# on the 128 training images (original COCO annotations, so crowd regions
# are ignored).
_base_ = ['./yolox_nano_1xb8-150e_coco128.py']

fit_ann_file = 'annotations/instances_train2017_original_coco.json'

val_dataloader = dict(
    dataset=dict(
        ann_file=fit_ann_file, data_prefix=dict(img='images/train2017/')))
test_dataloader = val_dataloader

val_evaluator = dict(ann_file=_base_.data_root + fit_ann_file)
test_evaluator = val_evaluator
