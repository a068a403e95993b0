"""N2UQ against float64 references from Liu et al., arXiv 2111.14826."""

from __future__ import annotations

import math

import pytest
import torch

from gabfusion_mm.models.fake_quants import (
    LSQPlusFakeQuantize,
    N2UQFakeQuantize,
    N2UQWeightFakeQuantize,
)
from gabfusion_mm.models.fake_quants.autograd_functions import N2UQFunction
from gabfusion_mm.models.fake_quants.functional import n2uq_ramp


def n2uq_reference(x, start, widths, scale, grad_factor, upstream):
    """N2UQ (arXiv 2111.14826), element by element.

    Knots T'_0 = start, T'_i = T'_{i-1} + a_i; thresholds T_i = T'_{i-1} +
    a_i / 2; forward y = start + scale * #{i : x >= T_i}. Generalized STE
    for x in interval i: dy/dx = scale / a_i, dy/da_j = -scale / a_i for
    j < i, dy/da_i = -scale (x - T'_{i-1}) / a_i**2, dy/dstart =
    1 - scale / a_i; outside [T'_0, T'_n]: dy/dstart = 1, the rest 0.
    dy/dscale = level. Parameter gradients are multiplied by grad_factor.
    """
    n = len(widths)
    knots = [start]
    for width in widths:
        knots.append(knots[-1] + width)
    out = torch.empty_like(x)
    grad_x = torch.zeros_like(x)
    grad_widths = [0.0] * n
    grad_start = 0.0
    grad_scale = 0.0
    for idx, value in enumerate(x.reshape(-1).tolist()):
        level = sum(value >= knots[i] + widths[i] / 2 for i in range(n))
        out.view(-1)[idx] = start + scale * level
        up = upstream.reshape(-1)[idx].item()
        grad_scale += up * level
        grad_start += up
        if not knots[0] <= value < knots[-1]:
            continue
        i = max(j for j in range(n) if knots[j] <= value)
        grad_x.view(-1)[idx] = up * scale / widths[i]
        grad_start -= up * scale / widths[i]
        for j in range(i):
            grad_widths[j] -= up * scale / widths[i]
        grad_widths[i] -= up * scale * (value - knots[i]) / widths[i] ** 2
    params = [
        torch.tensor(v, dtype=torch.float64) * grad_factor
        for v in (grad_start, grad_widths, grad_scale)
    ]
    return out, grad_x, params


@pytest.mark.parametrize('bit', [2, 3])
def test_n2uq_forward_and_generalized_ste(bit):
    torch.manual_seed(bit)
    n = 2**bit - 1
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 0.8
    upstream = torch.randn_like(x)
    widths = (torch.rand(n, dtype=torch.float64) + 0.2) * 0.4
    fake_quant = N2UQFakeQuantize(bit=bit).double().eval()
    fake_quant.start.data.fill_(-0.6)
    fake_quant.intervals.data.copy_(widths)
    fake_quant.scale.data.fill_(0.3)
    fake_quant.min_interval.fill_(1e-6)

    x_in = x.clone().requires_grad_()
    out = fake_quant(x_in)
    (out * upstream).sum().backward()

    g = 1 / math.sqrt(x.numel() * n)
    ref_out, ref_gx, (ref_gs, ref_ga, ref_gscale) = n2uq_reference(
        x, -0.6, widths.tolist(), 0.3, g, upstream
    )
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(x_in.grad, ref_gx, atol=1e-12)
    assert torch.allclose(fake_quant.start.grad, ref_gs.reshape(1))
    assert torch.allclose(fake_quant.intervals.grad, ref_ga)
    assert torch.allclose(fake_quant.scale.grad, ref_gscale.reshape(1))


def test_n2uq_eight_bit_levels():
    x = torch.linspace(-1, 3, 2000, dtype=torch.float64)
    fake_quant = N2UQFakeQuantize(bit=8).double().train()
    out = fake_quant(x)
    levels = (out - fake_quant.start) / fake_quant.scale
    assert torch.allclose(levels, levels.round(), atol=1e-9)
    assert levels.round().unique().numel() <= 256


def test_n2uq_ramp_gradcheck():
    torch.manual_seed(0)
    start = torch.tensor([-0.3], dtype=torch.float64, requires_grad=True)
    widths = torch.tensor(
        [0.2, 0.5, 0.3, 0.7, 0.25, 0.4, 0.6], dtype=torch.float64
    ).requires_grad_()
    # Keep inputs away from the knots, where r(x) has kinks.
    knots = -0.3 + torch.cat([torch.zeros(1), widths.detach().cumsum(0)])
    x = torch.rand(40, dtype=torch.float64) * 4 - 1
    distance = (x[:, None] - knots[None, :]).abs().min(dim=1).values
    x = x[distance > 1e-3].requires_grad_()
    assert torch.autograd.gradcheck(n2uq_ramp, (x, start, widths))


def test_n2uq_equal_widths_match_uniform_quantizer():
    torch.manual_seed(0)
    x = torch.nn.functional.silu(torch.randn(2, 4, 8, 8) * 2).double()
    n2uq = N2UQFakeQuantize(bit=4).double().train()
    out = n2uq(x)
    uniform = LSQPlusFakeQuantize(bit=4).double().eval()
    uniform.scale.data.copy_(n2uq.scale.data)
    uniform.offset.data.copy_(n2uq.start.data)
    assert torch.allclose(out, uniform(x), atol=1e-12)


def test_n2uq_initialization_and_thresholds():
    x = torch.randn(4, 4, 8, 8, dtype=torch.float64) - 0.1
    fake_quant = N2UQFakeQuantize(bit=3).double().train()
    fake_quant(x)
    high = torch.minimum(x.max(), x.mean() + 3 * x.std())
    step = (high - x.min()) / 7
    assert torch.allclose(fake_quant.start, x.min().reshape(1))
    assert torch.allclose(fake_quant.intervals, step.expand(7))
    assert torch.allclose(fake_quant.scale, step.reshape(1))
    expected = x.min() + (torch.arange(7, dtype=torch.float64) + 0.5) * step
    assert torch.allclose(fake_quant.thresholds, expected)


def test_n2uq_min_interval_clamps_width():
    fake_quant = N2UQFakeQuantize(bit=2).double()
    fake_quant.intervals.data.copy_(torch.tensor([0.5, -1.0, 0.5]))
    fake_quant.min_interval.fill_(0.01)
    thresholds = fake_quant.thresholds
    assert (thresholds[2] - thresholds[1]).item() == pytest.approx(0.255)


def test_n2uq_export_qparams():
    fake_quant = N2UQFakeQuantize(bit=2)
    fake_quant.start.data.fill_(-0.2)
    fake_quant.intervals.data.copy_(torch.tensor([0.1, 0.3, 0.2]))
    fake_quant.scale.data.fill_(0.25)
    qparams = fake_quant.export_qparams()
    assert torch.allclose(
        qparams['thresholds'], torch.tensor([-0.15, 0.05, 0.3])
    )
    assert (qparams['quant_min'], qparams['quant_max']) == (0, 3)
    assert qparams['offset'].item() == pytest.approx(-0.2)
    assert qparams['scale'].item() == 0.25


def n2uq_weight_reference(weight, scale, bit, grad_factor, upstream):
    """Mid-rise uniform levels after per-channel standardization.

    m_c = mean|w_c|; u = w / (m_c s); k = clip(floor(u), -2**(b-1),
    2**(b-1) - 1); w_q = (k + 1/2) s m_c. d w_q / d w = 1 for
    |u| <= 2**(b-1); d w_q / d s = m_c ((k + 1/2) - u) there and
    m_c (k + 1/2) outside, times grad_factor.
    """
    half = 2 ** (bit - 1)
    norm = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    u = weight / (norm * scale)
    k = torch.clamp(torch.floor(u), -half, half - 1)
    out = (k + 0.5) * scale * norm
    inside = u.abs() <= half
    grad_w = upstream * inside
    d_scale = torch.where(inside, (k + 0.5) - u, k + 0.5) * norm
    grad_scale = grad_factor * (upstream * d_scale).sum()
    return out, grad_w, grad_scale


@pytest.mark.parametrize('bit', [2, 3, 4, 8])
def test_n2uq_weight_forward_and_grads(bit):
    torch.manual_seed(bit)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64) * 0.1
    upstream = torch.randn_like(weight)
    fake_quant = N2UQWeightFakeQuantize(bit=bit).double().eval()
    fake_quant.scale.data.fill_(0.45)

    w_in = weight.clone().requires_grad_()
    out = fake_quant(w_in)
    (out * upstream).sum().backward()

    g = 1 / math.sqrt(weight.numel() * (2**bit - 1) / 2)
    ref_out, ref_gw, ref_gs = n2uq_weight_reference(
        weight, 0.45, bit, g, upstream
    )
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(w_in.grad, ref_gw, atol=1e-12)
    assert torch.allclose(fake_quant.scale.grad, ref_gs.reshape(1))


@pytest.mark.parametrize('bit', [2, 3, 4])
def test_n2uq_weight_initial_outer_levels(bit):
    torch.manual_seed(bit)
    weight = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    fake_quant = N2UQWeightFakeQuantize(bit=bit).double().train()
    out = fake_quant(weight * 100)
    norm = (weight * 100).abs().mean(dim=(1, 2, 3))
    outer = (2**bit - 1) / 2 ** (bit - 1) * norm
    assert fake_quant.scale.item() == 2.0 ** (2 - bit)
    assert torch.allclose(out.amax(dim=(1, 2, 3)), outer)


def test_n2uq_weight_export_grid():
    weight = torch.randn(6, 4, 3, 3)
    fake_quant = N2UQWeightFakeQuantize(bit=4)
    out = fake_quant(weight)
    qparams = fake_quant.export_qparams(weight)
    codes = out / qparams['scale'].reshape(-1, 1, 1, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert bool((codes.round().remainder(2) == 1).all())
    assert codes.abs().max() <= qparams['quant_max'] + 1e-4
    assert qparams['ch_axis'] == 0


def test_n2uq_backward_equals_surrogate_derivative():
    # The hand-written backward must equal autograd through the surrogate
    # start + scale * r(x), except for scale, whose gradient is the level.
    torch.manual_seed(0)
    x = (torch.rand(3, 50, dtype=torch.float64) * 3 - 1).requires_grad_()
    start = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    widths = torch.tensor(
        [0.3, 0.2, 0.5, 0.15, 0.4, 0.3, 0.25], dtype=torch.float64
    ).requires_grad_()
    scale = torch.tensor([0.35], dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 50, dtype=torch.float64)

    out = N2UQFunction.apply(x, start, widths, scale)
    grads = torch.autograd.grad((out * upstream).sum(), [x, start, widths])

    ramp = n2uq_ramp(x, start, widths)
    surrogate = start + scale.detach() * ramp
    expected = torch.autograd.grad(
        (surrogate * upstream).sum(), [x, start, widths]
    )
    for grad, reference in zip(grads, expected):
        assert torch.allclose(grad, reference, atol=1e-10)

    level = torch.floor(ramp.detach() + 0.5)
    assert torch.allclose(out, start + scale * level)
