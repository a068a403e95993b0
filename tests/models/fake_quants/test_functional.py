"""Straight-through helpers and the compiled fake quantization kernels."""

from __future__ import annotations

import torch

from gabfusion_mm.models.fake_quants import functional as F


def test_scale_grad_keeps_value_exactly():
    param = torch.tensor([0.1, 0.3, 7.7], requires_grad=True)
    out = F.scale_grad(param, 0.37)
    assert torch.equal(out, param)
    out.sum().backward()
    assert torch.allclose(param.grad, torch.full_like(param, 0.37))


def test_round_and_floor_ste():
    x = torch.tensor([-1.5, -0.4, 0.5, 2.7], requires_grad=True)
    rounded = F.round_ste(x)
    floored = F.floor_ste(x)
    assert torch.equal(rounded, torch.round(x))
    assert torch.equal(floored, torch.floor(x))
    (rounded + 2 * floored).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def _grads(fn, x, params, *consts):
    x = x.clone().requires_grad_()
    params = [p.clone().requires_grad_() for p in params]
    out = fn(x, *params, *consts)
    upstream = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    grads = torch.autograd.grad((out * upstream).sum(), [x, *params])
    return out.detach(), grads


def test_compiled_kernels_match_eager():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    cases = [
        (
            F.lsq_quantize,
            [torch.tensor([0.2]), torch.tensor([-0.3])],
            (0.0, 15.0, 0.05),
        ),
        (
            F.n2uq_quantize,
            [
                torch.tensor([-0.5]),
                torch.tensor([0.2, 0.3, 0.1, 0.4, 0.25, 0.3, 0.2]),
                torch.tensor([0.3]),
            ],
            (0.1,),
        ),
    ]
    for fn, params, consts in cases:
        eager_out, eager_grads = _grads(fn, x, params, *consts)
        kernel = F.get_kernel(fn, compiled=True)
        assert kernel is not fn
        assert fn.__name__ not in F._COMPILE_FAILED
        out, grads = _grads(kernel, x, params, *consts)
        assert fn.__name__ not in F._COMPILE_FAILED, fn.__name__
        assert torch.allclose(out, eager_out, atol=1e-6), fn.__name__
        for grad, eager_grad in zip(grads, eager_grads):
            assert torch.allclose(grad, eager_grad, atol=1e-5), fn.__name__


def test_get_kernel_eager_returns_function():
    assert F.get_kernel(F.pact_quantize, compiled=False) is F.pact_quantize
