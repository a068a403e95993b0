"""Detectors built from configs/gabfusion run at odd input sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope

from gabfusion_mm.models.layers import GABFusion


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries whatever scope an earlier test left."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


REPO_ROOT = Path(__file__).resolve().parents[3]

# (config, number of fusion nodes)
CASES = [
    ('yolox_tiny_gabfusion_1xb8-100e_coco128.py', 4),
    ('yolox_tiny_gabfusion-feedback_1xb8-100e_coco128.py', 4),
    ('yolox_nano_gabfusion_1xb8-100e_coco128.py', 4),
    ('yolov3_d53_gabfusion_1xb8-320-273e_coco128.py', 2),
    ('rtmdet_tiny_gabfusion_1xb32-300e_coco128.py', 4),
]


@pytest.mark.parametrize(('config', 'num_nodes'), CASES)
def test_config_builds_and_runs_odd_size(config, num_nodes):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'gabfusion' / config))
    model = MODELS.build(cfg.model).eval()
    nodes = [m for m in model.modules() if isinstance(m, GABFusion)]

    assert len(nodes) == num_nodes
    assert {node.mode for node in nodes} == {cfg.model.neck.fusion_cfg.mode}
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 100, 100), mode='tensor')
    assert all(torch.isfinite(t).all() for level in outputs for t in level)


def test_concat_config_keeps_stock_state_dict_keys():
    folder = REPO_ROOT / 'configs'
    gab = Config.fromfile(
        str(
            folder
            / 'gabfusion/yolox_tiny_gabfusion-concat_1xb8-100e_coco128.py'
        )
    )
    stock = Config.fromfile(
        str(folder / 'yolox/yolox_tiny_1xb8-100e_coco128.py')
    )

    gab_keys = list(MODELS.build(gab.model).state_dict())
    stock_keys = list(MODELS.build(stock.model).state_dict())
    assert gab_keys == stock_keys
