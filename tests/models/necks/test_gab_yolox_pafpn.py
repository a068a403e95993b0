"""Tests for GABYOLOXPAFPN."""

from __future__ import annotations

import pytest
import torch
from mmdet.models.necks import YOLOXPAFPN
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
    cfg = pafpn_cfg('GABYOLOXPAFPN', widen)
    neck = MODELS.build(cfg)
    outs = neck(pafpn_inputs(cfg, size))

    expected = [(2, cfg['out_channels'], s, s) for s in level_sizes(size)]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(o.is_contiguous() for o in outs)


def test_depthwise_output_shapes():
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125, use_depthwise=True)
    outs = MODELS.build(cfg)(pafpn_inputs(cfg, 100))

    assert [o.shape[-1] for o in outs] == level_sizes(100)


def test_four_fusion_nodes_with_branch_channels():
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.25)
    neck = MODELS.build(cfg)
    nodes = [m for m in neck.modules() if isinstance(m, GABFusion)]

    assert [n.in_channels for n in nodes] == [
        (128, 128),
        (64, 64),
        (64, 64),
        (128, 128),
    ]


@pytest.mark.parametrize('fusion_cfg', [None, dict(mode='concat')])
@pytest.mark.parametrize('train', [True, False])
def test_concat_mode_equals_stock(fusion_cfg, train):
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125)
    stock, gab = build_pair(cfg, 'YOLOXPAFPN', fusion_cfg)
    randomize_batch_norms(stock)
    gab.load_state_dict(stock.state_dict(), strict=True)
    stock.train(train)
    gab.train(train)
    inputs = pafpn_inputs(cfg, 128)

    assert list(gab.state_dict()) == list(stock.state_dict())
    for got, expected in zip(gab(inputs), stock(inputs)):
        assert torch.equal(got, expected)


def test_stock_checkpoint_loads_strictly():
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125)
    stock = YOLOXPAFPN(cfg['in_channels'], cfg['out_channels'], 1)
    gab = MODELS.build(cfg)

    load_state_dict(gab, stock.state_dict(), strict=True)
    for name, module in gab.named_modules():
        if isinstance(module, GABFusion):
            assert module.loaded_without_state, name


def test_stock_neck_fails_where_gab_neck_aligns():
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125)
    stock, gab = build_pair(cfg, 'YOLOXPAFPN', dict(mode='concat'))
    inputs = pafpn_inputs(cfg, 100)

    with pytest.raises(RuntimeError):
        stock(inputs)
    assert [o.shape[-1] for o in gab(inputs)] == level_sizes(100)


def test_misaligned_levels_raise_with_sizes():
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125)
    neck = MODELS.build(cfg)
    inputs = pafpn_inputs(cfg, 128)
    inputs[1] = torch.randn(2, cfg['in_channels'][1], 7, 7)

    with pytest.raises(ValueError, match='GABYOLOXPAFPN.*14x14.*16x16'):
        neck(inputs)


def test_wrong_number_of_levels_raises():
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125)
    neck = MODELS.build(cfg)
    with pytest.raises(ValueError, match='got 2 feature maps, expected 3'):
        neck(pafpn_inputs(cfg, 128)[:2])


@pytest.mark.parametrize(
    ('fusion_cfg', 'message'),
    [
        (dict(mode='balanced'), "'balanced'"),
        (dict(mode='feedback', eta=-1.0), 'eta=-1.0'),
        (dict(mode='feedback', tau=[0.0]), r'tau=\[0.0\] has 1'),
    ],
)
def test_bad_fusion_cfg_raises_at_build(fusion_cfg, message):
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125, fusion_cfg=fusion_cfg)
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)


@pytest.mark.parametrize('mode', ['learnable', 'feedback', 'concat'])
def test_all_nodes_record_grad_norms(mode):
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125, fusion_cfg=dict(mode=mode))
    neck = MODELS.build(cfg)
    nodes = [m for m in neck.modules() if isinstance(m, GABFusion)]
    for node in nodes:
        node.track_grad_norms = True

    sum(o.square().mean() for o in neck(pafpn_inputs(cfg, 128))).backward()

    for node in nodes:
        norms = node.pop_grad_norms()
        assert norms is not None and bool((norms > 0).all())


class LeafFusionTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, GABFusion) or super().is_leaf_module(m, qualname)


class ThreeLevels(torch.nn.Module):
    """Passes a tuple of maps to the neck, as a detector's backbone does."""

    def __init__(self, neck: torch.nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, p3, p4, p5):
        return self.neck((p3, p4, p5))


@pytest.mark.parametrize('tracer_class', [torch.fx.Tracer, LeafFusionTracer])
def test_fx_trace_matches_eager(tracer_class):
    cfg = pafpn_cfg('GABYOLOXPAFPN', 0.125)
    model = ThreeLevels(MODELS.build(cfg)).eval()
    graph = tracer_class().trace(model)
    traced = torch.fx.GraphModule(model, graph)
    inputs = pafpn_inputs(cfg, 100)

    for got, expected in zip(traced(*inputs), model(*inputs)):
        torch.testing.assert_close(got, expected)
