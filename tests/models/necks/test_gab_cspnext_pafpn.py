"""Tests for GABCSPNeXtPAFPN."""

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
    pafpn_cfg,
    pafpn_inputs,
    randomize_batch_norms,
)


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries whatever scope an earlier test left."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.mark.parametrize('widen', WIDEN_FACTORS)
@pytest.mark.parametrize('size', INPUT_SIZES)
def test_output_shapes(widen, size):
    cfg = pafpn_cfg('GABCSPNeXtPAFPN', widen)
    outs = MODELS.build(cfg)(pafpn_inputs(cfg, size))

    expected = [(2, cfg['out_channels'], s, s) for s in level_sizes(size)]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('train', [True, False])
def test_concat_mode_equals_stock(train):
    cfg = pafpn_cfg('GABCSPNeXtPAFPN', 0.125)
    stock, gab = build_pair(cfg, 'CSPNeXtPAFPN', dict(mode='concat'))
    randomize_batch_norms(stock)
    gab.load_state_dict(stock.state_dict(), strict=True)
    stock.train(train)
    gab.train(train)
    inputs = pafpn_inputs(cfg, 128)

    assert list(gab.state_dict()) == list(stock.state_dict())
    for got, expected in zip(gab(inputs), stock(inputs)):
        assert torch.equal(got, expected)


def test_stock_checkpoint_loads_strictly():
    cfg = pafpn_cfg('GABCSPNeXtPAFPN', 0.125)
    stock, _ = build_pair(cfg, 'CSPNeXtPAFPN')
    gab = MODELS.build(cfg)

    load_state_dict(gab, stock.state_dict(), strict=True)
    nodes = [m for m in gab.modules() if isinstance(m, GABFusion)]
    assert len(nodes) == 4
    assert all(node.loaded_without_state for node in nodes)


def test_bad_fusion_cfg_raises_at_build():
    cfg = pafpn_cfg('GABCSPNeXtPAFPN', 0.125, fusion_cfg=dict(eta=-0.5))
    with pytest.raises(ValueError, match='eta=-0.5'):
        MODELS.build(cfg)
