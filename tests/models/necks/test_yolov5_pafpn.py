"""Tests for YOLOv5PAFPN and its fusion points."""

from __future__ import annotations

import pytest
import torch

from gabfusion_mm.models.layers import GABFusion
from gabfusion_mm.models.necks import YOLOv5PAFPN


def _inputs(channels, size: int = 32, batch: int = 2) -> list[torch.Tensor]:
    """Backbone-like features at strides 8, 16, 32 of a size-px input."""
    return [
        torch.randn(batch, c, size // s, size // s)
        for c, s in zip(channels, (8, 16, 32))
    ]


def _reference_forward(neck: YOLOv5PAFPN, inputs) -> tuple:
    """YOLOv5's PAN written out for three levels with torch.cat joins."""
    p3, p4, p5 = inputs
    r5 = neck.reduce_layers[0](p5)
    t4 = neck.top_down_blocks[0](torch.cat([neck.upsample(r5), p4], 1))
    r4 = neck.reduce_layers[1](t4)
    out3 = neck.top_down_blocks[1](torch.cat([neck.upsample(r4), p3], 1))
    out4 = neck.bottom_up_blocks[0](
        torch.cat([neck.downsamples[0](out3), r4], 1)
    )
    out5 = neck.bottom_up_blocks[1](
        torch.cat([neck.downsamples[1](out4), r5], 1)
    )
    return out3, out4, out5


@pytest.mark.parametrize('channels', [(64, 128, 256), (128, 256, 512)])
def test_neck_output_shapes(channels):
    # YOLOv5n and YOLOv5s channels; outputs keep the input shapes.
    neck = YOLOv5PAFPN(in_channels=channels, num_csp_blocks=1)
    inputs = _inputs(channels, size=64, batch=1)

    outs = neck(inputs)

    assert [o.shape for o in outs] == [i.shape for i in inputs]


def test_neck_plain_concat_equals_reference():
    torch.manual_seed(0)
    channels = (16, 32, 64)
    neck = YOLOv5PAFPN(in_channels=channels, num_csp_blocks=1).eval()
    inputs = _inputs(channels)

    with torch.no_grad():
        outs = neck(inputs)
        expected = _reference_forward(neck, inputs)

    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_neck_layout():
    # C3 blocks without shortcut; block inputs are the two joined branches.
    neck = YOLOv5PAFPN(in_channels=(16, 32, 64), num_csp_blocks=2)

    csp_inputs = [
        b.main_conv.conv.in_channels
        for b in (*neck.top_down_blocks, *neck.bottom_up_blocks)
    ]
    csp_outputs = [
        b.final_conv.conv.out_channels
        for b in (*neck.top_down_blocks, *neck.bottom_up_blocks)
    ]
    assert csp_inputs == [64, 32, 32, 64]
    assert csp_outputs == [32, 16, 32, 64]
    for block in (*neck.top_down_blocks, *neck.bottom_up_blocks):
        assert len(block.blocks) == 2
        assert not any(b.add_identity for b in block.blocks)


def test_neck_default_has_no_fusion_state():
    neck = YOLOv5PAFPN(in_channels=(16, 32, 64), num_csp_blocks=1)

    assert not any('fusions' in key for key in neck.state_dict())


def test_neck_gabfusion_points():
    # Fusion channels (path, lateral): top-down (32, 32) then (16, 16),
    # bottom-up (16, 16) then (32, 32).
    channels = (16, 32, 64)
    neck = YOLOv5PAFPN(
        in_channels=channels,
        num_csp_blocks=1,
        fusion_cfg=dict(mode='learnable'),
    )
    fusions = [*neck.top_down_fusions, *neck.bottom_up_fusions]

    assert all(isinstance(f, GABFusion) for f in fusions)
    assert [f.in_channels for f in fusions] == [
        (32, 32),
        (16, 16),
        (16, 16),
        (32, 32),
    ]

    outs = neck(_inputs(channels))
    sum(o.sum() for o in outs).backward()

    assert [o.shape[1] for o in outs] == list(channels)
    for fusion in fusions:
        assert fusion.branch_logits.grad is not None
        assert fusion.branch_logits.grad.abs().sum() > 0


def test_neck_loads_plain_state_into_gabfusion():
    channels = (16, 32, 64)
    plain = YOLOv5PAFPN(in_channels=channels, num_csp_blocks=1)
    fused = YOLOv5PAFPN(
        in_channels=channels,
        num_csp_blocks=1,
        fusion_cfg=dict(mode='learnable'),
    )

    fused.load_state_dict(plain.state_dict(), strict=True)

    torch.testing.assert_close(
        fused.reduce_layers[0].conv.weight, plain.reduce_layers[0].conv.weight
    )


def test_neck_fuse_override_sees_every_join():
    calls = []

    class RecordingNeck(YOLOv5PAFPN):
        def fuse(self, stage, index, feats):
            calls.append((stage, index, [tuple(f.shape[1:]) for f in feats]))
            return super().fuse(stage, index, feats)

    neck = RecordingNeck(in_channels=(16, 32, 64), num_csp_blocks=1)
    neck(_inputs((16, 32, 64), size=64, batch=1))

    assert calls == [
        ('top_down', 0, [(32, 4, 4), (32, 4, 4)]),
        ('top_down', 1, [(16, 8, 8), (16, 8, 8)]),
        ('bottom_up', 0, [(16, 4, 4), (16, 4, 4)]),
        ('bottom_up', 1, [(32, 2, 2), (32, 2, 2)]),
    ]


def test_neck_four_levels():
    channels = (8, 16, 32, 64)
    neck = YOLOv5PAFPN(in_channels=channels, num_csp_blocks=1)
    inputs = [
        torch.randn(1, c, 32 // 2**i, 32 // 2**i)
        for i, c in enumerate(channels)
    ]

    outs = neck(inputs)

    assert [o.shape for o in outs] == [i.shape for i in inputs]
    assert len(neck.top_down_fusions) == len(neck.bottom_up_fusions) == 3


def test_neck_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r'in_channels=\[16\]'):
        YOLOv5PAFPN(in_channels=[16])
    neck = YOLOv5PAFPN(in_channels=(16, 32, 64), num_csp_blocks=1)
    with pytest.raises(ValueError, match='got 2 inputs, expected 3'):
        neck(_inputs((16, 32))[:2])
