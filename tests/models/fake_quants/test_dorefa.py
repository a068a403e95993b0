"""DoReFa weight quantization against a float64 reference."""

from __future__ import annotations

import pytest
import torch

from gabfusion_mm.models.fake_quants import DoReFaWeightFakeQuantize
from gabfusion_mm.models.fake_quants import functional as F


def dorefa_reference(weight, bit, rescale):
    """DoReFa-Net (arXiv 1606.06160) weight quantization, forward only.

    w_q = 2 * round(n * (tanh(w) / (2 max|tanh(w)|) + 1/2)) / n - 1,
    n = 2**bit - 1, optionally times max|w|.
    """
    n = 2**bit - 1
    t = torch.tanh(weight)
    unit = t / (2 * t.abs().max()) + 0.5
    out = 2 * torch.round(n * unit) / n - 1
    if rescale:
        out = out * weight.abs().max()
    return out


@pytest.mark.parametrize('bit', [2, 3, 4, 8])
@pytest.mark.parametrize('rescale', [True, False])
def test_dorefa_forward(bit, rescale):
    torch.manual_seed(bit)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64) * 0.2
    fake_quant = DoReFaWeightFakeQuantize(bit=bit, rescale=rescale).double()
    out = fake_quant(weight)
    assert torch.allclose(out, dorefa_reference(weight, bit, rescale))
    assert out.unique().numel() <= 2**bit


def test_dorefa_grad_is_derivative_without_rounding(monkeypatch):
    # With a straight-through round, the gradient equals the derivative of
    # the same formula with rounding removed; gradcheck checks that one.
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn_like(weight)
    out = F.dorefa_weight_quantize(weight, 7, None)
    (grad_ste,) = torch.autograd.grad((out * upstream).sum(), weight)

    monkeypatch.setattr(F, 'round_ste', lambda x: x)
    smooth = lambda w: F.dorefa_weight_quantize(w, 7, None)  # noqa: E731
    assert torch.autograd.gradcheck(smooth, (weight,))
    (grad_smooth,) = torch.autograd.grad(
        (smooth(weight) * upstream).sum(), weight
    )
    assert torch.allclose(grad_ste, grad_smooth)


def test_dorefa_rescale_is_constant_for_autograd():
    weight = torch.randn(2, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    fake_quant = DoReFaWeightFakeQuantize(bit=4).double()
    (grad,) = torch.autograd.grad(fake_quant(weight).sum(), weight)
    expected = (
        torch.autograd.grad(
            (F.dorefa_weight_quantize(weight, 15, None)).sum(), weight
        )[0]
        * weight.detach().abs().max()
    )
    assert torch.allclose(grad, expected)


def test_dorefa_export_grid_contains_outputs():
    weight = torch.randn(8, 4, 3, 3) * 0.1
    fake_quant = DoReFaWeightFakeQuantize(bit=3)
    out = fake_quant(weight)
    qparams = fake_quant.export_qparams(weight)
    codes = out / qparams['scale']
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().abs().max() <= qparams['quant_max']
    assert (qparams['quant_min'], qparams['quant_max']) == (-7, 7)
    # The level spacing is two grid units.
    assert torch.allclose(fake_quant.scale, 2 * qparams['scale'])


def test_dorefa_export_needs_weight():
    with pytest.raises(ValueError, match='needs the weight'):
        DoReFaWeightFakeQuantize().export_qparams()


def test_dorefa_rejects_per_channel():
    with pytest.raises(ValueError, match='per_channel=True'):
        DoReFaWeightFakeQuantize(per_channel=True)
