"""The VOC sample loads through configs/_base_/datasets/voc0712.py and the
VOC metric scores ground truth as a perfect detector."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

import gabfusion_mm  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_ROOT = REPO_ROOT / 'tests' / 'data' / 'VOCdevkit'


@pytest.fixture(scope='module')
def voc_cfg() -> Config:
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(
        str(REPO_ROOT / 'configs/_base_/datasets/voc0712.py')
    )

    def relocate(dataset_cfg: dict) -> None:
        dataset_cfg['data_root'] = str(VOC_ROOT) + '/'

    for dataset_cfg in cfg.train_dataloader.dataset.datasets:
        relocate(dataset_cfg)
    relocate(cfg.test_dataloader.dataset)
    return cfg


def test_voc_train_concat_loads(voc_cfg: Config) -> None:
    from mmdet.registry import DATASETS

    dataset = DATASETS.build(copy.deepcopy(voc_cfg.train_dataloader.dataset))
    assert len(dataset) == 10
    assert len(dataset.metainfo['classes']) == 20

    sample = dataset[0]
    boxes = sample['data_samples'].gt_instances.bboxes
    assert sample['inputs'].shape[0] == 3
    assert max(sample['inputs'].shape[1:]) == 640
    assert len(boxes) > 0


def test_voc_metric_scores_ground_truth(voc_cfg: Config) -> None:
    from mmdet.evaluation import VOCMetric
    from mmdet.registry import DATASETS

    dataset = DATASETS.build(copy.deepcopy(voc_cfg.test_dataloader.dataset))
    assert len(dataset) == 5

    metric = VOCMetric(metric='mAP', eval_mode='area')
    metric.dataset_meta = dataset.metainfo
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        instances = [i for i in info['instances'] if not i['ignore_flag']]
        bboxes = np.array([i['bbox'] for i in instances], dtype=np.float32)
        labels = np.array([i['bbox_label'] for i in instances])
        gt_instances = dict(
            bboxes=torch.from_numpy(bboxes),
            labels=torch.from_numpy(labels),
        )
        data_sample = dict(
            img_id=info['img_id'],
            ori_shape=(info['height'], info['width']),
            gt_instances=gt_instances,
            ignored_instances=dict(
                bboxes=torch.zeros((0, 4)), labels=torch.zeros(0).long()
            ),
            pred_instances=dict(
                bboxes=torch.from_numpy(bboxes),
                scores=torch.ones(len(bboxes)),
                labels=torch.from_numpy(labels),
            ),
        )
        metric.process({}, [data_sample])

    results = metric.compute_metrics(metric.results)
    assert results['mAP'] == pytest.approx(1.0, abs=1e-3)
