"""Tests for GABYOLOV3Neck."""

from __future__ import annotations

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_state_dict

from gabfusion_mm.models.layers import GABFusion

from .gab_neck_cases import (
    INPUT_SIZES,
    WIDEN_FACTORS,
    build_pair,
    level_sizes,
    randomize_batch_norms,
    yolov3_cfg,
    yolov3_inputs,
)


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries whatever scope an earlier test left."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.mark.parametrize('widen', WIDEN_FACTORS)
@pytest.mark.parametrize('size', INPUT_SIZES)
def test_output_shapes(widen, size):
    cfg = yolov3_cfg('GABYOLOV3Neck', widen)
    outs = MODELS.build(cfg)(yolov3_inputs(cfg, size))

    expected = [
        (2, c, s, s)
        for c, s in zip(cfg['out_channels'], level_sizes(size)[::-1])
    ]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(o.is_contiguous() for o in outs)


def test_two_fusion_nodes_with_branch_channels():
    neck = MODELS.build(yolov3_cfg('GABYOLOV3Neck', 0.125))
    nodes = [m for m in neck.modules() if isinstance(m, GABFusion)]

    assert [n.in_channels for n in nodes] == [(32, 64), (16, 32)]


@pytest.mark.parametrize('train', [True, False])
def test_concat_mode_equals_stock(train):
    cfg = yolov3_cfg('GABYOLOV3Neck', 0.125)
    stock, gab = build_pair(cfg, 'YOLOV3Neck', dict(mode='concat'))
    randomize_batch_norms(stock)
    gab.load_state_dict(stock.state_dict(), strict=True)
    stock.train(train)
    gab.train(train)
    inputs = yolov3_inputs(cfg, 128)

    assert list(gab.state_dict()) == list(stock.state_dict())
    for got, expected in zip(gab(inputs), stock(inputs)):
        assert torch.equal(got, expected)


def test_stock_checkpoint_loads_strictly():
    cfg = yolov3_cfg('GABYOLOV3Neck', 0.125)
    stock, _ = build_pair(cfg, 'YOLOV3Neck')
    gab = MODELS.build(cfg)

    load_state_dict(gab, stock.state_dict(), strict=True)
    assert all(node.loaded_without_state for node in gab.fusions)


def test_stock_neck_fails_where_gab_neck_aligns():
    cfg = yolov3_cfg('GABYOLOV3Neck', 0.125)
    stock, gab = build_pair(cfg, 'YOLOV3Neck', dict(mode='concat'))
    inputs = yolov3_inputs(cfg, 100)

    with pytest.raises(RuntimeError):
        stock(inputs)
    assert [o.shape[-1] for o in gab(inputs)] == level_sizes(100)[::-1]


def test_mismatched_scale_counts_raise():
    cfg = dict(yolov3_cfg('GABYOLOV3Neck', 0.125), num_scales=2)
    with pytest.raises(ValueError, match='num_scales=2, in_channels has 3'):
        MODELS.build(cfg)


def test_bad_fusion_cfg_raises_at_build():
    cfg = yolov3_cfg('GABYOLOV3Neck', 0.125, fusion_cfg=dict(mode='sum'))
    with pytest.raises(ValueError, match="'sum'"):
        MODELS.build(cfg)
