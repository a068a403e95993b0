"""Tests for ChannelLayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gabfusion_mm.models.layers import ChannelLayerNorm


def test_matches_layer_norm_over_last_dim_of_nhwc():
    norm = ChannelLayerNorm(5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)

    expected = F.layer_norm(
        x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, norm.eps
    ).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_differs_from_group_norm_with_one_group():
    norm = ChannelLayerNorm(4)
    # Per-pixel gains: GroupNorm(1) pools over C*H*W and keeps them.
    x = torch.randn(1, 4, 2, 2) * torch.tensor([1.0, 5.0, 0.2, 3.0]).view(
        1, 1, 2, 2
    )

    per_pixel_std = norm(x).var(dim=1, unbiased=False).sqrt()
    torch.testing.assert_close(
        per_pixel_std, torch.ones_like(per_pixel_std), rtol=0, atol=1e-3
    )
    group_std = F.group_norm(x, 1).var(dim=1, unbiased=False).sqrt()
    assert not torch.allclose(group_std, torch.ones_like(group_std), atol=0.1)


def test_normalize_skips_affine():
    norm = ChannelLayerNorm(3)
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(1.0)
    x = torch.randn(2, 3, 4, 4)

    torch.testing.assert_close(norm(x), norm.normalize(x) * 2 + 1)


def test_is_a_layer_norm_for_optimizer_constructors():
    assert isinstance(ChannelLayerNorm(3), torch.nn.LayerNorm)


def test_gradcheck():
    norm = ChannelLayerNorm(3).double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
