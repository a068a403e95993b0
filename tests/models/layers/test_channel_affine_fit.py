"""Tests for ChannelAffineFit."""

from __future__ import annotations

import pytest
import torch

from gabfusion_mm.models.layers import ChannelAffineFit


def test_recovers_exact_affine_over_batches():
    scale = torch.tensor([2.0, -0.5, 3.0], dtype=torch.float64)
    shift = torch.tensor([1.0, 0.0, -4.0], dtype=torch.float64)
    fit = ChannelAffineFit(3)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
        fit.update(u, u * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))

    result = fit.solve()
    torch.testing.assert_close(result.scale, scale, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result.shift, shift, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        result.residual_ratio,
        torch.zeros(3, dtype=torch.float64),
        rtol=0,
        atol=1e-10,
    )


def test_matches_lstsq_with_noise():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    v = 1.5 * u + torch.randn(u.shape, generator=gen, dtype=torch.float64)
    fit = ChannelAffineFit(2)
    fit.update(u, v)
    result = fit.solve()

    for c in range(2):
        x = u[:, c].reshape(-1)
        design = torch.stack([x, torch.ones_like(x)], dim=1)
        solution = torch.linalg.lstsq(design, v[:, c].reshape(-1, 1))
        coef = solution.solution.view(-1)
        residual = v[:, c].reshape(-1) - design @ coef
        ratio = residual.square().mean() / v[:, c].var(unbiased=False)
        torch.testing.assert_close(result.scale[c], coef[0])
        torch.testing.assert_close(result.shift[c], coef[1])
        torch.testing.assert_close(result.residual_ratio[c], ratio)


def test_constant_source_channel_gets_zero_scale():
    u = torch.ones(2, 1, 3, 3)
    v = torch.randn(2, 1, 3, 3)
    fit = ChannelAffineFit(1)
    fit.update(u, v)
    result = fit.solve()

    assert result.scale.item() == 0.0
    torch.testing.assert_close(result.shift, v.double().mean().reshape(1))


def test_dead_channel_gets_zero_scale():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    # Channel 1 carries only values of about 1e-25 (a dead SiLU channel).
    u[:, 1] = -1e-25 * (1 + 0.1 * u[:, 1])
    v = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    fit = ChannelAffineFit(4)
    fit.update(u, v)
    result = fit.solve()

    assert result.scale[1].item() == 0.0
    torch.testing.assert_close(result.shift[1], v[:, 1].mean())
    assert bool((result.scale[[0, 2, 3]] != 0).all())


def test_shape_mismatch_raises():
    fit = ChannelAffineFit(2)
    with pytest.raises(ValueError, match=r'\(1, 2, 3, 3\) and \(1, 2, 3, 4\)'):
        fit.update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_solve_before_update_raises():
    with pytest.raises(RuntimeError, match='before update'):
        ChannelAffineFit(2).solve()
