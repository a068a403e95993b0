"""PACT against a float64 reference from Choi et al., arXiv 1805.06085."""

from __future__ import annotations

import math

import pytest
import torch

from gabfusion_mm.models.fake_quants import PACTFakeQuantize


def pact_reference(x, lower, alpha, bit, upstream):
    """PACT (arXiv 1805.06085) with a lower bound, per element.

    y = clip(x, lower, alpha); y_q = round((y - lower) / d) * d + lower with
    d = (alpha - lower) / (2**bit - 1). d y_q / d x = 1 for lower < x <
    alpha; d y_q / d alpha = 1 for x >= alpha; d y_q / d lower = 1 for
    x <= lower.
    """
    step = (alpha - lower) / (2**bit - 1)
    clipped = torch.clamp(x, lower, alpha)
    out = torch.round((clipped - lower) / step) * step + lower
    grad_x = upstream * ((x > lower) & (x < alpha))
    grad_alpha = (upstream * (x >= alpha)).sum()
    grad_lower = (upstream * (x <= lower)).sum()
    return out, grad_x, grad_alpha, grad_lower


@pytest.mark.parametrize('bit', [2, 3, 4, 8])
def test_pact_learnable_lower_forward_and_grads(bit):
    torch.manual_seed(bit)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    upstream = torch.randn_like(x)
    fake_quant = PACTFakeQuantize(bit=bit).double().eval()
    fake_quant.alpha.data.fill_(1.2)
    fake_quant.lower.data.fill_(-0.25)

    x_in = x.clone().requires_grad_()
    out = fake_quant(x_in)
    (out * upstream).sum().backward()

    ref_out, ref_gx, ref_ga, ref_gl = pact_reference(
        x, -0.25, 1.2, bit, upstream
    )
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(x_in.grad, ref_gx, atol=1e-12)
    assert torch.allclose(fake_quant.alpha.grad, ref_ga.reshape(1))
    assert torch.allclose(fake_quant.lower.grad, ref_gl.reshape(1))


def test_pact_original_zero_lower_bound():
    x = torch.randn(4, 4, 5, 5, dtype=torch.float64)
    upstream = torch.randn_like(x)
    fake_quant = PACTFakeQuantize(bit=4, lower_bound=0.0, init_alpha=2.0)
    fake_quant = fake_quant.double().train()
    x_in = x.clone().requires_grad_()
    out = fake_quant(x_in)
    (out * upstream).sum().backward()

    ref_out, ref_gx, ref_ga, _ = pact_reference(x, 0.0, 2.0, 4, upstream)
    assert fake_quant.alpha.item() == 2.0  # init_alpha: no data init
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(x_in.grad, ref_gx, atol=1e-12)
    assert torch.allclose(fake_quant.alpha.grad, ref_ga.reshape(1))
    assert 'lower' not in dict(fake_quant.named_parameters())


def test_pact_grad_scaling_multiplies_clip_gradients():
    x = torch.randn(3, 4, 4, dtype=torch.float64) * 2
    plain = PACTFakeQuantize(bit=3).double().eval()
    scaled = PACTFakeQuantize(bit=3, grad_scaling=True).double().eval()
    for fake_quant in (plain, scaled):
        fake_quant.alpha.data.fill_(1.0)
        fake_quant.lower.data.fill_(-0.5)
        fake_quant(x).sum().backward()
    factor = 1 / math.sqrt(x.numel() * 7)
    assert torch.allclose(scaled.alpha.grad, plain.alpha.grad * factor)
    assert torch.allclose(scaled.lower.grad, plain.lower.grad * factor)


def test_pact_initialization_from_first_batch():
    torch.manual_seed(0)
    x = torch.nn.functional.silu(torch.randn(2, 8, 16, 16) * 2).double()
    fake_quant = PACTFakeQuantize(bit=4).double().train()
    fake_quant(x)
    high = torch.minimum(x.max(), x.mean() + 3 * x.std())
    assert torch.allclose(fake_quant.alpha, high.reshape(1))
    assert torch.allclose(fake_quant.lower, x.min().reshape(1))
    assert torch.allclose(fake_quant.scale, ((high - x.min()) / 15).reshape(1))


def test_pact_learned_lower_never_starts_above_zero():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) + 0.5
    fake_quant = PACTFakeQuantize(bit=4).double().train()
    fake_quant(x)
    assert fake_quant.lower.item() == 0.0


def test_pact_rejects_bad_lower_bound():
    with pytest.raises(ValueError, match="lower_bound='zero'"):
        PACTFakeQuantize(lower_bound='zero')


def test_pact_export_qparams():
    fake_quant = PACTFakeQuantize(bit=4)
    fake_quant.alpha.data.fill_(1.3)
    fake_quant.lower.data.fill_(-0.2)
    qparams = fake_quant.export_qparams()
    assert torch.allclose(qparams['scale'], torch.tensor([1.5 / 15]))
    assert (qparams['quant_min'], qparams['quant_max']) == (0, 15)
    assert qparams['offset'].item() == pytest.approx(-0.2)
