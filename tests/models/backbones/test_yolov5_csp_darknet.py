"""Tests for YOLOv5CSPDarknet and SPPFBottleneck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from gabfusion_mm.models.backbones import SPPFBottleneck, YOLOv5CSPDarknet


@pytest.mark.parametrize(
    'widen_factor, channels',
    [(0.25, (64, 128, 256)), (0.5, (128, 256, 512)), (0.125, (32, 64, 128))],
)
def test_backbone_output_shapes(widen_factor, channels):
    # n: 0.25, s: 0.5. At 160 px the strides 8, 16, 32 give 20, 10, 5.
    backbone = YOLOv5CSPDarknet(deepen_factor=0.33, widen_factor=widen_factor)

    outs = backbone(torch.randn(1, 3, 160, 160))

    assert [tuple(out.shape) for out in outs] == [
        (1, channels[0], 20, 20),
        (1, channels[1], 10, 10),
        (1, channels[2], 5, 5),
    ]


def test_backbone_depth_and_layout():
    # deepen 0.33: C3 block counts round(3, 6, 9, 3 x 0.33) = 1, 2, 3, 1.
    # The stem is a 6x6 stride-2 conv; SPPF ends the last stage only.
    backbone = YOLOv5CSPDarknet(deepen_factor=0.33, widen_factor=0.25)

    assert backbone.stem.conv.kernel_size == (6, 6)
    assert backbone.stem.conv.stride == (2, 2)
    blocks = [
        len(getattr(backbone, f'stage{i}')[1].blocks) for i in range(1, 5)
    ]
    assert blocks == [1, 2, 3, 1]
    assert isinstance(backbone.stage4[2], SPPFBottleneck)
    assert all(len(getattr(backbone, f'stage{i}')) == 2 for i in (1, 2, 3))
    assert backbone.out_channels == [16, 32, 64, 128, 256]


def test_backbone_all_out_indices():
    backbone = YOLOv5CSPDarknet(
        deepen_factor=0.33, widen_factor=0.125, out_indices=(0, 1, 2, 3, 4)
    )

    outs = backbone(torch.randn(2, 3, 64, 64))

    assert [out.shape[-1] for out in outs] == [32, 16, 8, 4, 2]


def test_sppf_equals_parallel_pooling():
    # Max pools of 5 in series equal parallel pools of 5, 9 and 13.
    torch.manual_seed(0)
    sppf = SPPFBottleneck(8, 12, kernel_size=5).double().eval()
    x = torch.randn(2, 8, 11, 11, dtype=torch.float64)

    hidden = sppf.conv1(x)
    pooled = [
        F.max_pool2d(hidden, k, stride=1, padding=k // 2) for k in (5, 9, 13)
    ]
    expected = sppf.conv2(torch.cat([hidden, *pooled], dim=1))

    torch.testing.assert_close(sppf(x), expected)


def test_backbone_frozen_stages():
    backbone = YOLOv5CSPDarknet(
        deepen_factor=0.33, widen_factor=0.125, frozen_stages=1
    )
    backbone.train()

    for name in ('stem', 'stage1'):
        layer = getattr(backbone, name)
        assert not any(p.requires_grad for p in layer.parameters())
        assert not layer.training
    assert all(p.requires_grad for p in backbone.stage2.parameters())
    assert backbone.stage2.training


def test_backbone_norm_eval():
    backbone = YOLOv5CSPDarknet(
        deepen_factor=0.33, widen_factor=0.125, norm_eval=True
    )
    backbone.train()

    norms = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    assert norms and not any(m.training for m in norms)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(out_indices=(2, 5)), r'out_indices=\(2, 5\)'),
        (dict(out_indices=()), r'out_indices=\(\)'),
        (dict(frozen_stages=5), 'frozen_stages=5'),
    ],
)
def test_backbone_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        YOLOv5CSPDarknet(widen_factor=0.125, **kwargs)


def test_sppf_rejects_even_kernel():
    with pytest.raises(ValueError, match='kernel_size=4'):
        SPPFBottleneck(8, 8, kernel_size=4)
