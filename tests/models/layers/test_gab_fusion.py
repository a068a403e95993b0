"""Tests for GABFusion and build_fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope
from torch.func import functional_call

import gabfusion_mm  # noqa: F401
from gabfusion_mm.models.layers import GABFusion, build_fusion


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries whatever scope an earlier test left."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


def reference_fusion(feats, logits, weight, bias, eps=1e-5):
    """GABFusion written from its formulas, for float64 comparisons."""
    alpha = torch.exp(logits) / torch.exp(logits).sum()
    x = torch.cat([a * f for a, f in zip(alpha, feats)], dim=1)
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def randomize(fusion: GABFusion, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fusion.branch_logits.copy_(torch.randn(2, generator=gen))
        fusion.norm.weight.copy_(torch.rand(6, generator=gen) + 0.5)
        fusion.norm.bias.copy_(torch.randn(6, generator=gen) * 0.1)


def branches(dtype=torch.float32, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, 2, 3, 4), (2, 4, 3, 4)]
    return [
        (torch.randn(s, generator=gen, dtype=dtype) * (i + 1)).requires_grad_(
            requires_grad
        )
        for i, s in enumerate(shapes)
    ]


def test_forward_matches_float64_reference():
    fusion = GABFusion([2, 4]).double()
    randomize(fusion)
    feats = branches(torch.float64)

    out = fusion(feats)
    expected = reference_fusion(
        feats,
        fusion.branch_logits,
        fusion.norm.weight,
        fusion.norm.bias,
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_inputs_and_parameters():
    fusion = GABFusion([2, 4]).double()
    randomize(fusion)
    feats = branches(torch.float64, requires_grad=True)
    params = {
        name: p.detach().clone().requires_grad_()
        for name, p in fusion.named_parameters()
    }
    names = list(params)

    def run(f0, f1, *values):
        return functional_call(fusion, dict(zip(names, values)), ([f0, f1],))

    assert torch.autograd.gradcheck(run, (*feats, *params.values()))


def test_learnable_lambda_receives_gradient():
    fusion = GABFusion([2, 4])
    randomize(fusion)
    out = fusion(branches())
    (out[:, :2] * torch.arange(12.0).view(1, 1, 3, 4)).sum().backward()

    grad = fusion.branch_logits.grad
    assert grad is not None
    assert grad.abs().max() > 1e-6


def test_normalization_is_per_pixel_over_channels():
    fusion = GABFusion([2, 4])
    feats = branches()
    feats[1] = feats[1] * torch.linspace(0.1, 10, 12).view(1, 1, 3, 4)
    out = fusion(feats)

    def per_pixel_standardized(y):
        mean = y.mean(dim=1)
        std = y.var(dim=1, unbiased=False).sqrt()
        return bool(
            torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
            and torch.allclose(std, torch.ones_like(std), atol=1e-3)
        )

    assert per_pixel_standardized(out)
    scaled = fusion.scaled_concat(feats)
    assert not per_pixel_standardized(F.group_norm(scaled, 1))


def test_concat_mode_is_plain_cat():
    fusion = GABFusion([2, 4], mode='concat')
    feats = branches()

    assert torch.equal(fusion(feats), torch.cat(feats, dim=1))
    assert fusion.state_dict() == {}
    assert list(fusion.parameters()) == []
    assert fusion.alpha is None


def grad_norms_by_autograd(fusion, feats):
    out = fusion(feats)
    weight = torch.linspace(-1, 3, out.numel()).view_as(out)
    loss = (out * weight).sum()
    grads = torch.autograd.grad(loss, feats, retain_graph=True)
    loss.backward()
    return torch.stack([g.norm() for g in grads])


@pytest.mark.parametrize('mode', ['learnable', 'feedback', 'concat'])
def test_recorded_grad_norms_match_autograd(mode):
    fusion = GABFusion([2, 4], mode=mode)
    fusion.track_grad_norms = True
    if mode != 'concat':
        with torch.no_grad():
            fusion.branch_logits.copy_(torch.tensor([0.7, -0.4]))
    feats = branches(requires_grad=True)

    expected = grad_norms_by_autograd(fusion, feats)
    recorded = fusion.pop_grad_norms()

    torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-7)
    assert fusion.pop_grad_norms() is None


def test_grad_norms_not_recorded_in_eval_mode():
    fusion = GABFusion([2, 4], mode='feedback').eval()
    grad_norms_by_autograd(fusion, branches(requires_grad=True))

    assert fusion.pop_grad_norms() is None


def test_feedback_lowers_alpha_of_dominant_branch():
    fusion = GABFusion([2, 4], mode='feedback', eta=0.5)
    feats = branches(requires_grad=True)
    out = fusion(feats)
    # Branch 1's output channels carry 20x larger loss weights.
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    weight[:, 2:] *= 20
    (out * weight).sum().backward()
    norms = fusion.pop_grad_norms()
    assert norms[1] > 2 * norms[0]

    before = fusion.alpha.clone()
    fusion.feedback_update(norms)
    after = fusion.alpha

    assert after[1] < before[1]
    assert after[0] > before[0]


def test_feedback_update_matches_float64_reference():
    eta, beta, eps, tau = 0.05, 0.1, 1e-12, [0.25, -0.25]
    fusion = GABFusion([2, 4], mode='feedback', eta=eta, beta=beta, tau=tau)
    fusion.double()
    sequence = torch.tensor(
        [[1.0, 3.0], [2.0, 0.5], [0.1, 4.0]], dtype=torch.float64
    )

    logits = torch.zeros(2, dtype=torch.float64)
    ema = None
    for norms in sequence:
        ema = norms.clone() if ema is None else (1 - beta) * ema + beta * norms
        logs = torch.log(ema + eps)
        error = logs - logs.mean() - torch.tensor(tau, dtype=torch.float64)
        logits = logits - eta * error
        fusion.feedback_update(norms)

    torch.testing.assert_close(
        fusion.branch_logits, logits, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(fusion.grad_norm_ema, ema, rtol=0, atol=1e-12)


def test_feedback_keeps_lambda_out_of_parameters():
    fusion = GABFusion([2, 4], mode='feedback')
    names = {name for name, _ in fusion.named_parameters()}

    assert 'branch_logits' not in names
    assert {'branch_logits', 'grad_norm_ema'} <= set(fusion.state_dict())


def test_feedback_update_rejected_outside_feedback_mode():
    fusion = GABFusion([2, 4], mode='learnable')
    with pytest.raises(RuntimeError, match='learnable'):
        fusion.feedback_update(torch.ones(2))


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        (dict(mode='softmax'), "'softmax'"),
        (dict(eta=-0.1), 'eta=-0.1'),
        (dict(beta=0.0), 'beta=0.0'),
        (dict(beta=1.5), 'beta=1.5'),
        (dict(eps=0.0), 'eps=0.0'),
        (dict(tau=[0.0, 0.0, 0.0]), 'tau=\\[0.0, 0.0, 0.0\\] has 3'),
        (dict(norm_init='zeros'), "'zeros'"),
    ],
)
def test_invalid_config_raises_with_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GABFusion([2, 4], **kwargs)


def test_single_branch_rejected():
    with pytest.raises(ValueError, match=r'in_channels=\[8\]'):
        GABFusion([8])


def test_build_fusion_rejects_unknown_key():
    with pytest.raises(TypeError, match='etaa'):
        build_fusion(dict(mode='feedback', etaa=0.1), [2, 4])


def test_build_fusion_rejects_non_dict():
    with pytest.raises(TypeError, match="'feedback'"):
        build_fusion('feedback', [2, 4])


def test_build_fusion_rejects_in_channels():
    with pytest.raises(ValueError, match='in_channels=\\[1, 2\\]'):
        build_fusion(dict(in_channels=[1, 2]), [2, 4])


def test_build_fusion_defaults():
    assert build_fusion(None, [2, 4]).mode == 'concat'
    assert build_fusion(dict(), [2, 4]).mode == 'learnable'
    built = build_fusion(dict(mode='feedback', eta=0.2), [2, 4])
    assert built.mode == 'feedback'
    assert built.eta == 0.2


def test_wrong_input_count_raises():
    fusion = GABFusion([2, 4])
    with pytest.raises(ValueError, match='got 1 inputs, expected 2'):
        fusion(branches()[:1])


def test_wrong_channels_raise():
    fusion = GABFusion([2, 4])
    feats = branches()
    feats[1] = feats[1][:, :3]
    with pytest.raises(ValueError, match=r'input 1 has shape \(2, 3, 3, 4\)'):
        fusion(feats)


def test_spatial_mismatch_names_sizes():
    fusion = GABFusion([2, 4])
    feats = branches()
    feats[1] = feats[1][..., :3]
    with pytest.raises(ValueError, match=r'\(3, 4\), \(3, 3\)'):
        fusion(feats)


def test_stock_state_dict_loads_strictly():
    fusion = GABFusion([2, 4])
    result = fusion.load_state_dict({}, strict=True)

    assert result.missing_keys == []
    assert fusion.loaded_without_state


def test_partial_state_dict_still_reports_missing_keys():
    fusion = GABFusion([2, 4])
    with pytest.raises(RuntimeError, match='norm.weight'):
        fusion.load_state_dict({'branch_logits': torch.zeros(2)}, strict=True)


def test_identity_init_reproduces_concat():
    fusion = GABFusion([2, 4], norm_init='identity')
    fusion.load_state_dict({}, strict=True)
    gen = torch.Generator().manual_seed(2)
    # Features with channel means far apart plus small per-pixel noise,
    # like post-activation maps: the default LayerNorm changes them a lot.
    target = torch.randn(1, 6, 1, 1, generator=gen) * 2 + 0.1 * torch.randn(
        2, 6, 3, 4, generator=gen
    )
    feats = [target[:, :2], target[:, 2:]]

    default = GABFusion([2, 4], norm_init='default')
    default.load_state_dict({}, strict=True)
    default_error = (default(feats) - target).square().mean()
    fitted_error = (fusion(feats) - target).square().mean()

    assert not fusion.loaded_without_state
    assert fitted_error < 0.05 * default_error


def test_identity_init_is_least_squares_solution():
    fusion = GABFusion([2, 4], norm_init='identity').double()
    fusion.load_state_dict({}, strict=True)
    feats = branches(torch.float64)
    fusion(feats)

    normalized = fusion.norm.normalize(fusion.scaled_concat(feats))
    target = torch.cat(feats, dim=1)
    for c in range(6):
        u = normalized[:, c].reshape(-1)
        design = torch.stack([u, torch.ones_like(u)], dim=1)
        solution = torch.linalg.lstsq(
            design, target[:, c].reshape(-1, 1)
        ).solution.view(-1)
        torch.testing.assert_close(
            fusion.norm.weight[c], solution[0], rtol=1e-9, atol=1e-9
        )
        torch.testing.assert_close(
            fusion.norm.bias[c], solution[1], rtol=1e-9, atol=1e-9
        )


def test_identity_init_skipped_in_eval_mode():
    fusion = GABFusion([2, 4], norm_init='identity').eval()
    fusion.load_state_dict({}, strict=True)
    fusion(branches())

    assert fusion.loaded_without_state
    assert torch.equal(fusion.norm.weight, torch.ones(6))


class PairFusion(torch.nn.Module):
    """Calls a fusion with a list built in forward, as necks do."""

    def __init__(self, fusion: GABFusion) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, first, second):
        return self.fusion([first, second])


@pytest.mark.parametrize('mode', ['learnable', 'feedback', 'concat'])
def test_fx_trace_matches_eager(mode):
    fusion = GABFusion([2, 4], mode=mode)
    if mode != 'concat':
        randomize(fusion)
    model = PairFusion(fusion)
    traced = torch.fx.symbolic_trace(model)
    feats = branches()

    torch.testing.assert_close(traced(*feats), model(*feats))
