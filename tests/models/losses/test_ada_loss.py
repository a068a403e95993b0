"""Tests for the ADA loss against float64 references written from formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gabfusion_mm.models.losses.ada_loss import ADALoss, divergence

CONFIGS = [
    dict(normalization=norm, divergence=div, kl_direction=direction)
    for norm, (div, direction) in itertools.product(
        ('sum', 'softmax'),
        (('kl', 'forward'), ('kl', 'reverse'), ('js', 'forward')),
    )
]
VERSIONS = ('v1', 'v2')


def _reference_energy_v1(x: torch.Tensor, lam: float) -> torch.Tensor:
    """s = (x - mu)^2 / (4 (var + lam)) + 1/2, loops over images/channels."""
    out = torch.empty_like(x)
    n, c, h, w = x.shape
    for i in range(n):
        for j in range(c):
            m = x[i, j]
            mu = m.sum() / (h * w)
            var = ((m - mu) ** 2).sum() / max(h * w - 1, 1)
            out[i, j] = (m - mu) ** 2 / (4 * (var + lam)) + 0.5
    return out


def _reference_energy_v2(x, quantized, step, gamma, kappa):
    """S = log(1 + z^2) + gamma log(1 + r^2), loops over images/channels."""
    out = torch.empty_like(x)
    n, c, h, w = x.shape
    for i in range(n):
        for j in range(c):
            m = x[i, j]
            mu = m.sum() / (h * w)
            sigma = torch.sqrt(((m - mu) ** 2).sum() / max(h * w - 1, 1))
            z = (m - mu).abs() / (sigma + kappa)
            energy = torch.log(1 + z**2)
            if quantized is not None:
                if step is None:
                    s_c = sigma
                elif step.numel() == 1:
                    s_c = step.reshape(())
                else:
                    s_c = step.reshape(-1)[j]
                r = (m - quantized[i, j]).abs() / (s_c + kappa)
                energy = energy + gamma * torch.log(1 + r**2)
            out[i, j] = energy
    return out


def _reference_distribution(energy, normalization, temperature):
    """P over the H*W positions, from sigmoid / sum or from a softmax."""
    flat = energy.flatten(2)
    if normalization == 'sum':
        attention = 1 / (1 + torch.exp(-flat))
        return attention / attention.sum(-1, keepdim=True)
    weights = torch.exp(flat / temperature)
    return weights / weights.sum(-1, keepdim=True)


def _reference_kl(p, q):
    return (p * torch.log(p / q)).sum(-1)


def _reference_loss(student, teacher, cfg, quantized=None, step=None):
    version = cfg.get('version', 'v1')
    temperature = cfg.get('temperature', 1.0)
    if version == 'v1':
        e_s = _reference_energy_v1(student, 1e-4)
        e_t = _reference_energy_v1(teacher, 1e-4)
    else:
        e_s = _reference_energy_v2(student, quantized, step, 1.0, 1e-2)
        e_t = _reference_energy_v2(teacher, None, None, 1.0, 1e-2)
    p_s = _reference_distribution(e_s, cfg['normalization'], temperature)
    p_t = _reference_distribution(e_t, cfg['normalization'], temperature)
    if cfg['divergence'] == 'js':
        m = (p_s + p_t) / 2
        per_channel = (_reference_kl(p_s, m) + _reference_kl(p_t, m)) / 2
    elif cfg['kl_direction'] == 'forward':
        per_channel = _reference_kl(p_t, p_s)
    else:
        per_channel = _reference_kl(p_s, p_t)
    return per_channel.mean()


def _pair(shape=(2, 3, 5, 4), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(shape, generator=gen, dtype=dtype)
    teacher = torch.randn(shape, generator=gen, dtype=dtype)
    return student, teacher


@pytest.mark.parametrize('cfg', CONFIGS)
def test_v1_matches_float64_reference(cfg):
    student, teacher = _pair()
    loss = ADALoss(version='v1', loss_weight=0.5, temperature=0.7, **cfg)
    expected = 0.5 * _reference_loss(
        student, teacher, dict(cfg, temperature=0.7)
    )
    torch.testing.assert_close(
        loss(student, teacher), expected, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize('cfg', CONFIGS)
@pytest.mark.parametrize('step_kind', ['tensor', 'channel', 'none'])
def test_v2_matches_float64_reference(cfg, step_kind):
    student, teacher = _pair()
    quantized = torch.round(student / 0.3) * 0.3
    step = {
        'tensor': torch.tensor([0.3], dtype=torch.float64),
        'channel': torch.tensor([0.3, 0.2, 0.5], dtype=torch.float64),
        'none': None,
    }[step_kind]
    loss = ADALoss(version='v2', **cfg)
    expected = _reference_loss(
        student, teacher, dict(cfg, version='v2'), quantized, step
    )
    torch.testing.assert_close(
        loss(student, teacher, quantized, step),
        expected,
        rtol=1e-10,
        atol=1e-12,
    )


def test_v2_without_distortion_ignores_step():
    student, teacher = _pair()
    loss = ADALoss(version='v2')
    plain = loss(student, teacher)
    # Q(x) = x makes r = 0, the same as a student without a quantizer.
    exact = loss(student, teacher, student.clone(), torch.tensor(0.3))
    torch.testing.assert_close(plain, exact, rtol=0, atol=1e-14)


@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('cfg', CONFIGS)
def test_identical_inputs_give_zero(version, cfg):
    student, _ = _pair()
    loss = ADALoss(version=version, **cfg)
    assert loss(student, student.clone()).item() == 0.0


@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('cfg', CONFIGS)
def test_different_inputs_give_positive(version, cfg):
    student, teacher = _pair()
    loss = ADALoss(version=version, **cfg)
    assert loss(student, teacher).item() > 0.0


@pytest.mark.parametrize('version', VERSIONS)
def test_js_is_symmetric(version):
    student, teacher = _pair()
    loss = ADALoss(version=version, divergence='js')
    torch.testing.assert_close(
        loss(student, teacher), loss(teacher, student), rtol=0, atol=1e-15
    )


def test_js_is_at_most_log2():
    # Disjoint one-hot distributions reach the bound log 2.
    log_p = torch.log(torch.tensor([[1.0, 1e-30, 1e-30]], dtype=torch.double))
    log_q = torch.log(torch.tensor([[1e-30, 1.0, 1e-30]], dtype=torch.double))
    value = divergence(log_p, log_q, 'js')
    assert value.item() <= math.log(2) + 1e-12
    assert value.item() == pytest.approx(math.log(2), abs=1e-12)

    # Sharp single peaks at different positions come close to the bound.
    student = torch.zeros(2, 4, 6, 6, dtype=torch.float64)
    teacher = torch.zeros(2, 4, 6, 6, dtype=torch.float64)
    student[..., 0, 0] = 100.0
    teacher[..., 5, 5] = 100.0
    loss = ADALoss(divergence='js', temperature=0.01)
    value = loss(student, teacher).item()
    assert value <= math.log(2) + 1e-12
    assert value > 0.99 * math.log(2)


def test_sum_normalization_is_nearly_flat():
    # sigmoid(s) with s >= 1/2 lies in [0.62, 1), so no position can weigh
    # more than 1 / 0.62 times another.
    student, _ = _pair(shape=(2, 3, 8, 8))
    student[:, :, 0, 0] = 1e3
    loss = ADALoss(normalization='sum')
    prob = loss.log_distribution(loss.energy(student)).exp()
    ratio = prob.amax(-1) / prob.amin(-1)
    assert ratio.max().item() <= 1 / torch.sigmoid(torch.tensor(0.5)).item()


@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('cfg', CONFIGS)
def test_gradcheck(version, cfg):
    student, teacher = _pair(shape=(2, 2, 3, 3))
    student.requires_grad_(True)
    loss = ADALoss(version=version, temperature=0.5, **cfg)
    if version == 'v1':
        assert torch.autograd.gradcheck(lambda x: loss(x, teacher), student)
        return

    # Q(x) = x + d with a straight-through gradient, and a fixed Q(x).
    offset = torch.full_like(student, 0.05)
    fixed = student.detach().clone() + offset
    assert torch.autograd.gradcheck(
        lambda x: loss(x, teacher, x + offset, torch.tensor(0.2)), student
    )
    assert torch.autograd.gradcheck(
        lambda x: loss(x, teacher, fixed, torch.tensor(0.2)), student
    )
    assert torch.autograd.gradcheck(
        lambda x: loss(x, teacher, fixed, None), student
    )


@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('divergence_kind', ['kl', 'js'])
def test_gradient_reaches_student_only(version, divergence_kind):
    student, teacher = _pair(dtype=torch.float32)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss = ADALoss(version=version, divergence=divergence_kind)
    loss(student, teacher).backward()
    assert student.grad is not None
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def _constant(shape):
    return torch.full(shape, 3.0)


EDGE_CASES = {
    'constant_maps': lambda: (
        _constant((2, 3, 4, 4)),
        _constant((2, 3, 4, 4)),
    ),
    'constant_student': lambda: (
        _constant((2, 3, 4, 4)),
        torch.randn(2, 3, 4, 4),
    ),
    'one_by_one': lambda: (torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1)),
    'one_row': lambda: (torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5)),
    'empty_batch': lambda: (torch.randn(0, 3, 4, 4), torch.randn(0, 3, 4, 4)),
    'fp16': lambda: (
        torch.randn(2, 3, 4, 4).half() * 100,
        torch.randn(2, 3, 4, 4).half(),
    ),
    'fp16_constant': lambda: (
        _constant((2, 3, 4, 4)).half(),
        _constant((2, 3, 4, 4)).half(),
    ),
}


@pytest.mark.parametrize('case', sorted(EDGE_CASES))
@pytest.mark.parametrize('version', VERSIONS)
@pytest.mark.parametrize('cfg', CONFIGS)
def test_edge_cases_are_finite(case, version, cfg):
    student, teacher = EDGE_CASES[case]()
    student.requires_grad_(True)
    quantized = None
    if version == 'v2':
        quantized = torch.round(student / 0.25) * 0.25
    loss = ADALoss(version=version, **cfg)
    value = loss(student, teacher, quantized, torch.tensor(0.25))
    value.backward()
    assert value.dim() == 0
    assert torch.isfinite(value)
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()


def test_fp16_loss_is_float32():
    student, teacher = _pair(dtype=torch.float16)
    value = ADALoss()(student, teacher)
    assert value.dtype == torch.float32
    expected = ADALoss()(student.float(), teacher.float())
    torch.testing.assert_close(value, expected)


def test_empty_batch_gives_zero():
    student = torch.randn(0, 3, 4, 4, requires_grad=True)
    value = ADALoss()(student, torch.randn(0, 3, 4, 4))
    assert value.item() == 0.0


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(version='v3'),
        dict(normalization='l1'),
        dict(divergence='mse'),
        dict(kl_direction='both'),
        dict(temperature=0.0),
        dict(lam=-1.0),
        dict(kappa=0.0),
        dict(gamma=-0.5),
    ],
)
def test_invalid_arguments_raise(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        ADALoss(**kwargs)


def test_shape_mismatch_raises():
    loss = ADALoss(version='v2')
    with pytest.raises(ValueError, match='shapes differ'):
        loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 5))
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'):
        loss(torch.randn(3, 4, 4), torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match='quantized feature'):
        loss(
            torch.randn(1, 3, 4, 4),
            torch.randn(1, 3, 4, 4),
            torch.randn(1, 3, 2, 2),
        )
    with pytest.raises(ValueError, match='step has 2 values'):
        x = torch.randn(1, 3, 4, 4)
        loss(x, x, x, torch.ones(2))
