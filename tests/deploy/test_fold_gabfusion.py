"""Tests for the GABFusion fold and tools/deploy/fold_gabfusion.py."""

from __future__ import annotations

import pytest
import torch
from mmcv.cnn import ConvModule
from mmdet.models.layers import CSPLayer
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import load_state_dict
from torch import nn

import gabfusion_mm  # noqa: F401
from gabfusion_mm.deploy import fold_gabfusion, stock_model_config
from gabfusion_mm.deploy.fold_gabfusion import _fold_into_consumer
from gabfusion_mm.models.layers import GABFusion
from tests.conftest import requires_coco128


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries whatever scope an earlier test left."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


class FusionBlock(nn.Module):
    """A GABFusion node feeding a CSP block, as in a PAFPN stage."""

    def __init__(self, mode: str = 'learnable') -> None:
        super().__init__()
        self.fusion = GABFusion([4, 6], mode=mode)
        self.block = CSPLayer(10, 8, num_blocks=1, add_identity=False)

    def forward(self, feats):
        return self.block(self.fusion(list(feats)))


def randomize(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, GABFusion) and m.mode != 'concat':
                m.branch_logits.copy_(torch.randn(2, generator=gen))
                size = m.norm.weight.shape
                m.norm.weight.copy_(torch.rand(size, generator=gen) + 0.5)
                m.norm.bias.copy_(torch.randn(size, generator=gen) * 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(
                    torch.randn(m.num_features, generator=gen) * 0.1
                )
                m.running_var.copy_(
                    torch.rand(m.num_features, generator=gen) + 0.5
                )


def affine_exact_inputs(fusion: GABFusion, seed: int) -> list[torch.Tensor]:
    """Branches whose scaled concat has one mean and variance per pixel.

    The LayerNorm of such a tensor is exactly a per-channel affine, so the
    fold must reproduce it up to float32 round-off.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 10, 5, 5, generator=gen)
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True) * 2 + 0.5
    alpha = fusion.alpha
    scaled = x.split(list(fusion.in_channels), dim=1)
    return [part / a for part, a in zip(scaled, alpha)]


@pytest.mark.parametrize('bias', [False, True])
def test_affine_and_alpha_fold_exactly_into_consumer(bias):
    torch.manual_seed(0)
    model = nn.Module()
    model.fusion = GABFusion([3, 5]).double()
    model.consumer = ConvModule(
        8, 4, 1, bias=bias, norm_cfg=None if bias else dict(type='BN')
    ).double()
    randomize(model)
    model.eval()
    alpha = torch.tensor([0.3, 0.7], dtype=torch.float64)
    scale = torch.rand(8, dtype=torch.float64) + 0.5
    shift = torch.randn(8, dtype=torch.float64)
    feats = [torch.randn(2, c, 4, 4, dtype=torch.float64) for c in (3, 5)]

    scaled = torch.cat([a * f for a, f in zip(alpha, feats)], dim=1)
    expected = model.consumer(
        scale.view(1, -1, 1, 1) * scaled + shift.view(1, -1, 1, 1)
    )
    _fold_into_consumer(
        model, 'consumer.conv', model.fusion, alpha, scale, shift
    )
    got = model.consumer(torch.cat(feats, dim=1))

    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('mode', ['learnable', 'feedback'])
def test_fold_exact_when_layer_norm_is_affine(mode):
    block = FusionBlock(mode)
    randomize(block)
    batches = [affine_exact_inputs(block.fusion, s) for s in range(3)]
    block.eval()
    with torch.no_grad():
        expected = [block(b) for b in batches]

    result = fold_gabfusion(block, batches)

    assert block.fusion.mode == 'concat'
    assert result.nodes['fusion'].consumers == [
        'block.main_conv.conv',
        'block.short_conv.conv',
    ] or result.nodes['fusion'].consumers == [
        'block.short_conv.conv',
        'block.main_conv.conv',
    ]
    assert result.nodes['fusion'].residual_ratio < 1e-9
    with torch.no_grad():
        for batch, reference in zip(batches, expected):
            torch.testing.assert_close(
                block(batch), reference, rtol=1e-5, atol=1e-5
            )


def neck_and_inputs():
    cfg = dict(
        type='GABYOLOXPAFPN',
        in_channels=[16, 32, 64],
        out_channels=16,
        num_csp_blocks=1,
    )
    torch.manual_seed(0)
    neck = MODELS.build(cfg)
    randomize(neck)
    gen = torch.Generator().manual_seed(1)
    batches = [
        [
            torch.randn(2, c, s, s, generator=gen)
            for c, s in zip(cfg['in_channels'], (16, 8, 4))
        ]
        for _ in range(3)
    ]
    return cfg, neck, batches


@pytest.mark.parametrize('sequential', [True, False])
def test_neck_fold_only_round_off(sequential):
    _, neck, batches = neck_and_inputs()

    result = fold_gabfusion(neck, batches, sequential=sequential)

    assert len(result.nodes) == 4
    # The LayerNorm-to-affine step is the only approximation; the fold's
    # own arithmetic changes float32 outputs by round-off only.
    assert result.max_abs_diff_rounding < 1e-5 * result.max_abs_output
    assert result.max_abs_diff == pytest.approx(
        result.max_abs_diff_affine, rel=1e-3
    )


def test_fold_rejects_node_that_never_runs():
    model = nn.Module()
    model.fusion = GABFusion([2, 2])
    model.conv = nn.Conv2d(4, 4, 1)

    def forward(m, feats):
        return m.conv(torch.cat(feats, dim=1))

    batches = [[torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)]]
    with pytest.raises(ValueError, match=r"\['fusion'\] did not run"):
        fold_gabfusion(model, batches, forward)


def test_folded_neck_loads_strictly_into_stock_neck():
    cfg, neck, batches = neck_and_inputs()
    fold_gabfusion(neck, batches)
    stock = MODELS.build(dict(cfg, type='YOLOXPAFPN')).eval()

    load_state_dict(stock, neck.state_dict(), strict=True)
    with torch.no_grad():
        for got, expected in zip(stock(batches[0]), neck(batches[0])):
            assert torch.equal(got, expected)


def test_fold_rejects_non_1x1_consumer():
    model = nn.Module()
    model.fusion = GABFusion([2, 2])
    model.conv = nn.Conv2d(4, 3, 3, padding=1)
    randomize(model)

    def forward(m, feats):
        return m.conv(m.fusion(feats))

    batches = [[torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)]]
    with pytest.raises(ValueError, match='conv consumes a fused tensor'):
        fold_gabfusion(model, batches, forward)


def test_fold_detects_consumer_it_cannot_rewrite():
    model = nn.Module()
    model.fusion = GABFusion([2, 2])
    model.conv = nn.Conv2d(4, 4, 1)
    randomize(model)

    def forward(m, feats):
        fused = m.fusion(feats)
        return m.conv(fused) + fused

    batches = [[torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)]]
    with pytest.raises(RuntimeError, match='consumer other than'):
        fold_gabfusion(model, batches, forward)


def test_stock_model_config_replaces_neck():
    cfg = dict(
        type='YOLOX',
        neck=dict(
            type='GABYOLOXPAFPN',
            in_channels=[8, 16, 32],
            out_channels=8,
            fusion_cfg=dict(mode='feedback'),
        ),
    )
    stock = stock_model_config(cfg)

    assert stock['neck'] == dict(
        type='YOLOXPAFPN', in_channels=[8, 16, 32], out_channels=8
    )
    assert cfg['neck']['type'] == 'GABYOLOXPAFPN'


@requires_coco128()
def test_fold_tool_writes_stock_checkpoint(run_tool, tmp_path):
    config = 'configs/gabfusion/yolox_nano_gabfusion_1xb8-100e_coco128.py'
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    randomize(model)
    source = tmp_path / 'gab.pth'
    torch.save(dict(state_dict=model.state_dict()), source)
    out = tmp_path / 'folded.pth'
    out_config = tmp_path / 'folded_config.py'

    proc = run_tool(
        'tools/deploy/fold_gabfusion.py',
        config,
        str(source),
        '--calib-batches',
        '2',
        '--out',
        str(out),
        '--out-config',
        str(out_config),
        '--cfg-options',
        'train_dataloader.batch_size=2',
    )

    assert 'Largest output difference before vs after the fold:' in proc.stdout
    assert 'loaded the folded weights strictly' in proc.stdout
    stock_cfg = Config.fromfile(
        'configs/yolox/yolox_nano_1xb8-100e_coco128.py'
    )
    stock = MODELS.build(stock_cfg.model)
    load_checkpoint(stock, str(out), map_location='cpu', strict=True)
    meta = torch.load(out, weights_only=False)['meta']['gabfusion_fold']
    assert meta['neck_type'] == 'YOLOXPAFPN'
    assert len(meta['nodes']) == 4

    written = Config.fromfile(str(out_config))
    assert written.model.neck.type == 'YOLOXPAFPN'
    assert 'fusion_cfg' not in written.model.neck
    hook_types = [hook['type'] for hook in written.custom_hooks]
    assert 'GABFusionHook' not in hook_types
    load_checkpoint(
        MODELS.build(written.model), str(out), map_location='cpu', strict=True
    )
