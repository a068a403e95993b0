"""Straight-through helpers and the compiled fake quantization kernels."""

from __future__ import annotations

import pytest
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
        eager = F.get_kernel(fn, compiled=False)
        eager_out, eager_grads = _grads(eager, x, params, *consts)
        kernel = F.get_kernel(fn, compiled=True)
        assert kernel is not fn
        assert fn.__name__ not in F._COMPILE_FAILED
        out, grads = _grads(kernel, x, params, *consts)
        assert fn.__name__ not in F._COMPILE_FAILED, fn.__name__
        assert torch.allclose(out, eager_out, atol=1e-6), fn.__name__
        for grad, eager_grad in zip(grads, eager_grads):
            assert torch.allclose(grad, eager_grad, atol=1e-5), fn.__name__


def test_get_kernel_eager_kernels():
    assert F.get_kernel(F.lsq_quantize, compiled=False) is F._lsq_eager
    assert F.get_kernel(F.pact_quantize, compiled=False) is F._pact_eager
    assert F.get_kernel(F.n2uq_quantize, compiled=False) is F._n2uq_eager


LSQ_CASES = {
    'per-tensor': ((2, 3, 5, 5), (1,), False, -8.0, 7.0),
    'offset': ((2, 3, 5, 5), (1,), True, 0.0, 15.0),
    'per-channel': ((6, 3, 3, 3), (6, 1, 1, 1), False, -4.0, 3.0),
    'single channel': ((1, 4, 1, 1), (1, 1, 1, 1), False, -128.0, 127.0),
}


@pytest.mark.parametrize('case', list(LSQ_CASES))
def test_lsq_function_matches_formula(case):
    x_shape, scale_shape, with_offset, qmin, qmax = LSQ_CASES[case]
    torch.manual_seed(0)
    x = torch.randn(x_shape, dtype=torch.float64)
    params = [torch.rand(scale_shape, dtype=torch.float64) * 0.3 + 0.05]
    if with_offset:
        params.append(torch.full(scale_shape, -0.2, dtype=torch.float64))

    def formula(x, scale, offset=None):
        return F.lsq_quantize(x, scale, offset, qmin, qmax, 0.3)

    def function(x, scale, offset=None):
        return F._lsq_eager(x, scale, offset, qmin, qmax, 0.3)

    expected_out, expected_grads = _grads(formula, x, params)
    out, grads = _grads(function, x, params)
    assert torch.equal(out, expected_out)
    for grad, expected in zip(grads, expected_grads):
        assert torch.allclose(grad, expected, atol=1e-12)


@pytest.mark.parametrize('bit', [2, 3])
def test_n2uq_function_matches_formula(bit):
    torch.manual_seed(bit)
    n = 2**bit - 1
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    params = [
        torch.tensor([-0.4], dtype=torch.float64),
        torch.rand(n, dtype=torch.float64) * 0.4 + 0.1,
        torch.tensor([0.3], dtype=torch.float64),
    ]
    expected_out, expected_grads = _grads(F.n2uq_quantize, x, params, 0.2)
    out, grads = _grads(F._n2uq_eager, x, params, 0.2)
    assert torch.allclose(out, expected_out, atol=1e-12)
    for grad, expected in zip(grads, expected_grads):
        assert torch.allclose(grad, expected, atol=1e-10)


@pytest.mark.parametrize('learn_lower', [True, False])
def test_pact_function_matches_formula(learn_lower):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    upper = torch.tensor([1.1], dtype=torch.float64, requires_grad=True)
    lower = torch.tensor([-0.25], dtype=torch.float64)
    lower.requires_grad_(learn_lower)
    upstream = torch.randn_like(x)
    results = []
    for fn in (F.pact_quantize, F._pact_eager):
        x_in = x.clone().requires_grad_()
        out = fn(x_in, lower, upper, 15)
        inputs = [x_in, upper] + ([lower] if learn_lower else [])
        grads = torch.autograd.grad((out * upstream).sum(), inputs)
        results.append((out.detach(), grads))
    (out, grads), (expected_out, expected_grads) = results
    assert torch.equal(out, expected_out)
    for grad, expected in zip(grads, expected_grads):
        assert torch.allclose(grad, expected, atol=1e-12)


def test_failed_compile_falls_back_to_eager(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError('no C++ compiler')

        return run

    monkeypatch.setattr(F, '_COMPILED', {})
    monkeypatch.setattr(F, '_COMPILE_FAILED', set())
    monkeypatch.setattr(torch, 'compile', broken_compile)
    x = torch.randn(4, 3)
    scale = torch.tensor([0.5])
    kernel = F.get_kernel(F.midrise_quantize, compiled=True)
    out = kernel(x, scale, 16, 0.1)
    assert torch.equal(out, F.midrise_quantize(x, scale, 16, 0.1))
    assert 'midrise_quantize' in F._COMPILE_FAILED
    assert F.get_kernel(F.midrise_quantize, compiled=True) is (
        F.midrise_quantize
    )
