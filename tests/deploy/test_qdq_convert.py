"""Fake quantizers described as QuantizeLinear/DequantizeLinear grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.ao.quantization import FakeQuantize

from gabfusion_mm.deploy.qdq_convert import (
    NonUniformQuantizerError,
    qdq_spec,
)
from gabfusion_mm.deploy.qdq_ops import QuantizeDequantize
from gabfusion_mm.models.fake_quants import (
    DoReFaWeightFakeQuantize,
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
    N2UQFakeQuantize,
    N2UQWeightFakeQuantize,
    PACTFakeQuantize,
)

# name -> (factory, kind, expected container, expected offset handling)
CASES = {
    'lsq_w4_per_channel': (
        lambda: LSQFakeQuantize(bit=4, per_channel=True, num_channels=8),
        'weight',
        'INT4',
        'none',
    ),
    'lsq_a4_signed': (lambda: LSQFakeQuantize(bit=4), 'act', 'INT4', 'none'),
    'lsq_a3_signed': (lambda: LSQFakeQuantize(bit=3), 'act', 'INT4', 'none'),
    'lsq_a4_unsigned': (
        lambda: LSQFakeQuantize(bit=4, signed=False),
        'act',
        'UINT4',
        'none',
    ),
    'lsq_a8_signed': (lambda: LSQFakeQuantize(bit=8), 'act', 'INT8', 'none'),
    'lsq_plus_a4': (
        lambda: LSQPlusFakeQuantize(bit=4),
        'act',
        'UINT4',
        'sub_add',
    ),
    'pact_a4_learned_lower': (
        lambda: PACTFakeQuantize(bit=4),
        'act',
        'UINT4',
        'sub_add',
    ),
    'pact_a4_zero_lower': (
        lambda: PACTFakeQuantize(bit=4, lower_bound=0.0),
        'act',
        'UINT4',
        'none',
    ),
    'dorefa_w4': (
        lambda: DoReFaWeightFakeQuantize(bit=4),
        'weight',
        'INT8',
        'none',
    ),
    'dorefa_w8': (
        lambda: DoReFaWeightFakeQuantize(bit=8),
        'weight',
        'INT8',
        'sub_add',
    ),
    'n2uq_w8': (
        lambda: N2UQWeightFakeQuantize(bit=8),
        'weight',
        'INT8',
        'sub_add',
    ),
    'n2uq_w4': (
        lambda: N2UQWeightFakeQuantize(bit=4),
        'weight',
        'INT8',
        'none',
    ),
    'n2uq_a4_uniform': (
        lambda: N2UQFakeQuantize(bit=4),
        'act',
        'UINT4',
        'sub_add',
    ),
    'torch_fake_quantize_quint8': (FakeQuantize, 'act', 'UINT8', 'none'),
}


def _initialized(factory, x: torch.Tensor):
    """Build a fake quantizer and let it initialize (or observe) on x."""
    fake_quant = factory()
    fake_quant.train()
    fake_quant(x)
    fake_quant.eval()
    fake_quant.disable_observer()
    return fake_quant


def _steps(diff: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    if scale.dim() == 1:
        shape = [1] * diff.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
    return diff.abs() / scale


@pytest.mark.parametrize('case', sorted(CASES))
def test_spec_reproduces_fake_quant(case):
    factory, kind, container, offset_mode = CASES[case]
    torch.manual_seed(0)
    if kind == 'weight':
        x = torch.randn(8, 4, 3, 3) * 0.1
    else:
        x = F.silu(torch.randn(2, 4, 6, 6) * 2)
    fake_quant = _initialized(factory, x)

    with torch.no_grad():
        expected = fake_quant(x)
        spec, mode = qdq_spec(fake_quant, x, case)
        if kind == 'weight':
            actual = QuantizeDequantize(spec, constant=expected)(x)
        else:
            actual = QuantizeDequantize(spec)(x)
    steps = _steps(actual - expected, spec.scale, spec.axis)

    assert spec.container()[0] == container
    assert mode == offset_mode
    if kind == 'weight':
        assert float(steps.max()) < 1e-3
    else:
        assert float(steps.max()) <= 1 + 1e-3
        assert float((steps > 1e-3).double().mean()) < 1e-3


def test_lsq_plus_whole_step_offset_becomes_zero_point():
    fake_quant = LSQPlusFakeQuantize(bit=4).eval()
    fake_quant.scale.data.fill_(0.05)
    fake_quant.offset.data.fill_(-0.15)

    spec, mode = qdq_spec(fake_quant, None, 'input_fake_quant')

    assert mode == 'zero_point'
    assert spec.offset is None
    assert int(spec.zero_point) == 3


def test_lsq_plus_offset_beyond_container_stays_sub_add():
    fake_quant = LSQPlusFakeQuantize(bit=4).eval()
    fake_quant.scale.data.fill_(0.05)
    # A zero point of -4 does not fit UINT4.
    fake_quant.offset.data.fill_(0.2)

    spec, mode = qdq_spec(fake_quant, None, 'input_fake_quant')

    assert mode == 'sub_add'
    assert torch.allclose(spec.offset, torch.tensor(0.2))


def test_n2uq_non_uniform_thresholds_raise():
    torch.manual_seed(0)
    x = F.silu(torch.randn(2, 4, 6, 6) * 2)
    fake_quant = _initialized(N2UQFakeQuantize, x)
    fake_quant.intervals.data[3] *= 1.5

    with pytest.raises(NonUniformQuantizerError, match='N2UQFakeQuantize'):
        qdq_spec(fake_quant, x, 'neck.conv.input_fake_quant')


def test_module_without_grid_raises():
    with pytest.raises(TypeError, match='not a fake quantizer'):
        qdq_spec(torch.nn.ReLU(), None, 'relu')
