"""LSQ and LSQ+ against float64 references (arXiv 1902.08153, 2004.09576)."""

from __future__ import annotations

import math

import pytest
import torch

from gabfusion_mm.models.fake_quants import (
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
)


def _int_range(bit: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bit - 1)), 2 ** (bit - 1) - 1
    return 0, 2**bit - 1


def lsq_reference(x, scale, offset, qmin, qmax, grad_factor, upstream):
    """LSQ (arXiv 1902.08153) and LSQ+ (arXiv 2004.09576), per element.

    Forward: v_q = round(clip((v - beta) / s, qmin, qmax)) * s + beta.
    d v_q / d v = 1 inside the range, else 0.
    d v_q / d s = round(t) - t inside, qmin below, qmax above (t = v/s).
    d v_q / d beta = 0 inside, 1 outside. Step and offset gradients are
    multiplied by the gradient scale g.
    """
    t = (x - offset) / scale
    below, above = t < qmin, t > qmax
    inside = ~(below | above)
    levels = torch.where(below, float(qmin), torch.where(above, qmax, t))
    levels = torch.round(levels)
    out = levels * scale + offset
    grad_x = upstream * inside
    d_scale = torch.where(
        inside, torch.round(t) - t, torch.where(below, qmin, float(qmax))
    )
    grad_scale = grad_factor * upstream * d_scale
    grad_offset = grad_factor * upstream * (~inside)
    return out, grad_x, grad_scale, grad_offset


def _run(fake_quant, x, upstream):
    x = x.clone().requires_grad_()
    out = fake_quant(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize('bit', [2, 3, 4, 8])
@pytest.mark.parametrize('signed', [True, False])
def test_lsq_forward_and_grads(bit, signed):
    torch.manual_seed(bit)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    upstream = torch.randn_like(x)
    fake_quant = LSQFakeQuantize(bit=bit, signed=signed).double().eval()
    fake_quant.scale.data.fill_(0.3)

    out, grad_x = _run(fake_quant, x, upstream)

    qmin, qmax = _int_range(bit, signed)
    g = 1 / math.sqrt(x.numel() * qmax)
    ref_out, ref_gx, ref_gs, _ = lsq_reference(
        x, 0.3, 0.0, qmin, qmax, g, upstream
    )
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(grad_x, ref_gx, atol=1e-12)
    assert torch.allclose(
        fake_quant.scale.grad, ref_gs.sum().reshape(1), atol=1e-10
    )


def test_lsq_outputs_lie_on_grid():
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    fake_quant = LSQFakeQuantize(bit=3).double().eval()
    fake_quant.scale.data.fill_(0.25)
    levels = fake_quant(x) / 0.25
    assert torch.equal(levels, levels.round())
    assert levels.min() >= -4
    assert levels.max() <= 3


def test_lsq_per_channel_matches_reference():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    upstream = torch.randn_like(weight)
    steps = torch.tensor([0.1, 0.2, 0.4, 0.8], dtype=torch.float64)
    fake_quant = LSQFakeQuantize(bit=4, per_channel=True, num_channels=4)
    fake_quant = fake_quant.double().eval()
    fake_quant.scale.data.copy_(steps)

    out, grad_x = _run(fake_quant, weight, upstream)

    view = steps.reshape(-1, 1, 1, 1)
    g = 1 / math.sqrt(27 * 7)
    ref_out, ref_gx, ref_gs, _ = lsq_reference(
        weight, view, 0.0, -8, 7, g, upstream
    )
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(grad_x, ref_gx, atol=1e-12)
    assert torch.allclose(
        fake_quant.scale.grad, ref_gs.sum(dim=(1, 2, 3)), atol=1e-10
    )


def test_lsq_initialization_from_first_batch():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64) * 3
    fake_quant = LSQFakeQuantize(bit=4).double().train()
    fake_quant(x)
    expected = 2 * x.abs().mean() / math.sqrt(7)
    assert torch.allclose(fake_quant.scale, expected.reshape(1))
    assert fake_quant.initialized.item() == 1

    # Later batches train the step instead of re-initializing it.
    fake_quant(x * 10)
    assert torch.allclose(fake_quant.scale, expected.reshape(1))


def test_lsq_per_channel_initialization_resizes():
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    fake_quant = LSQFakeQuantize(bit=4, per_channel=True).double().train()
    fake_quant(weight)
    expected = 2 * weight.abs().mean(dim=(1, 2, 3)) / math.sqrt(7)
    assert fake_quant.scale.shape == (6,)
    assert torch.allclose(fake_quant.scale, expected)


def test_lsq_no_initialization_in_eval_or_with_observer_off():
    x = torch.randn(8, 8, dtype=torch.float64)
    fake_quant = LSQFakeQuantize(bit=4).double().eval()
    fake_quant(x)
    assert fake_quant.initialized.item() == 0
    fake_quant.train()
    fake_quant.disable_observer()
    fake_quant(x)
    assert fake_quant.initialized.item() == 0
    assert fake_quant.scale.item() == 1.0


@pytest.mark.parametrize('bit', [2, 4, 8])
def test_lsq_plus_forward_and_grads(bit):
    torch.manual_seed(bit)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 0.5 - 0.1
    upstream = torch.randn_like(x)
    fake_quant = LSQPlusFakeQuantize(bit=bit).double().eval()
    fake_quant.scale.data.fill_(0.07)
    fake_quant.offset.data.fill_(-0.28)

    out, grad_x = _run(fake_quant, x, upstream)

    qmin, qmax = 0, 2**bit - 1
    g = 1 / math.sqrt(x.numel() * qmax)
    ref_out, ref_gx, ref_gs, ref_go = lsq_reference(
        x, 0.07, -0.28, qmin, qmax, g, upstream
    )
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(grad_x, ref_gx, atol=1e-12)
    assert torch.allclose(
        fake_quant.scale.grad, ref_gs.sum().reshape(1), atol=1e-10
    )
    assert torch.allclose(
        fake_quant.offset.grad, ref_go.sum().reshape(1), atol=1e-10
    )


def test_lsq_plus_initialization_covers_silu_range():
    torch.manual_seed(0)
    x = torch.nn.functional.silu(torch.randn(4, 8, 16, 16) * 3).double()
    fake_quant = LSQPlusFakeQuantize(bit=4).double().train()
    fake_quant(x)

    low = x.min()
    high = torch.minimum(x.max(), x.mean() + 3 * x.std())
    assert low < 0
    assert torch.allclose(fake_quant.offset, low.reshape(1))
    assert torch.allclose(fake_quant.scale, ((high - low) / 15).reshape(1))
    # The lowest level reproduces the most negative input.
    assert torch.isclose(fake_quant(x).min(), low)


def test_lsq_plus_signed_initialization_puts_lowest_level_at_min():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.2
    fake_quant = LSQPlusFakeQuantize(bit=3, signed=True).double().train()
    fake_quant(x)
    lowest = -4 * fake_quant.scale + fake_quant.offset
    assert torch.allclose(lowest, x.min().reshape(1))


def test_lsq_float32_matches_float64_reference():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    fake_quant = LSQFakeQuantize(bit=4).eval()
    fake_quant.scale.data.fill_(0.125)  # a power of two: exact division
    out = fake_quant(x.float()).double()
    ref_out = lsq_reference(x.float().double(), 0.125, 0.0, -8, 7, 1.0, x)[0]
    assert torch.equal(out, ref_out)


def test_lsq_export_qparams():
    fake_quant = LSQPlusFakeQuantize(bit=4)
    fake_quant.scale.data.fill_(0.5)
    fake_quant.offset.data.fill_(-0.25)
    qparams = fake_quant.export_qparams()
    assert qparams['scale'].dtype == torch.float32
    assert qparams['zero_point'].dtype == torch.int32
    assert (qparams['quant_min'], qparams['quant_max']) == (0, 15)
    assert qparams['ch_axis'] is None
    assert qparams['offset'].item() == -0.25
    assert qparams['thresholds'] is None

    per_channel = LSQFakeQuantize(bit=8, per_channel=True, num_channels=3)
    qparams = per_channel.export_qparams()
    assert qparams['scale'].shape == (3,)
    assert (qparams['quant_min'], qparams['quant_max']) == (-128, 127)
    assert qparams['ch_axis'] == 0
