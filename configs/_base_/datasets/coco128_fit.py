# COCO128 fit protocol: train on the 128 train2017 images and evaluate on the
# same images. It shows whether a model can fit the data, not how it
# generalizes. The original COCO annotations are used for evaluation so that
# the 10 crowd regions are ignored as COCO does.
_base_ = './coco128.py'

fit_ann_file = 'annotations/instances_train2017_original_coco.json'

val_dataloader = dict(
    dataset=dict(
        ann_file=fit_ann_file, data_prefix=dict(img='images/train2017/')))
test_dataloader = val_dataloader

val_evaluator = dict(ann_file=_base_.data_root + fit_ann_file)
test_evaluator = val_evaluator
