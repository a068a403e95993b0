"""Behaviour shared by every low-bit fake quantizer."""

from __future__ import annotations

import pytest
import torch
from mmrazor.registry import MODELS
from torch import nn
from torch.ao.quantization import (
    FakeQuantizeBase,
    disable_fake_quant,
    enable_fake_quant,
)

from gabfusion_mm.models.fake_quants import (
    DoReFaWeightFakeQuantize,
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
    N2UQFakeQuantize,
    N2UQWeightFakeQuantize,
    PACTFakeQuantize,
)
from gabfusion_mm.models.fake_quants.base import check_bit

ALL_TYPES = [
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
    PACTFakeQuantize,
    DoReFaWeightFakeQuantize,
    N2UQFakeQuantize,
    N2UQWeightFakeQuantize,
]


@pytest.mark.parametrize('cls', ALL_TYPES)
def test_registered_fake_quantize_base(cls):
    fake_quant = MODELS.build(dict(type=f'mmrazor.{cls.__name__}', bit=3))
    assert isinstance(fake_quant, cls)
    assert isinstance(fake_quant, FakeQuantizeBase)
    assert fake_quant.bit == 3


@pytest.mark.parametrize('cls', ALL_TYPES)
def test_disabled_fake_quant_is_identity(cls):
    x = torch.randn(2, 4, 5, 5)
    fake_quant = cls(bit=2).train()
    fake_quant.apply(disable_fake_quant)
    assert torch.equal(fake_quant(x), x)
    fake_quant.apply(enable_fake_quant)
    assert not torch.equal(fake_quant(x), x)


@pytest.mark.parametrize('cls', ALL_TYPES)
def test_scale_and_learnable_parameters(cls):
    fake_quant = cls(bit=4).train()
    fake_quant(torch.randn(3, 4, 3, 3))
    assert isinstance(fake_quant.scale, torch.Tensor)
    assert bool((fake_quant.scale > 0).all())
    for param in fake_quant.parameters():
        assert isinstance(param, nn.Parameter)
    # mmrazor's MMArchitectureQuant resets every fake quantizer this way.
    fake_quant.scale.data = torch.ones_like(fake_quant.scale)
    fake_quant.zero_point.data = torch.zeros_like(fake_quant.zero_point)
    assert fake_quant(torch.randn(3, 4, 3, 3)).shape == (3, 4, 3, 3)


@pytest.mark.parametrize('cls', ALL_TYPES)
def test_export_qparams_keys(cls):
    fake_quant = cls(bit=4).train()
    weight = torch.randn(3, 4, 3, 3)
    fake_quant(weight)
    qparams = fake_quant.export_qparams(weight)
    assert set(qparams) == {
        'scale',
        'zero_point',
        'quant_min',
        'quant_max',
        'ch_axis',
        'bit',
        'offset',
        'thresholds',
    }
    assert qparams['scale'].dtype == torch.float32
    assert qparams['zero_point'].dtype == torch.int32
    assert qparams['bit'] == 4


@pytest.mark.parametrize('bit', [1, 9, 4.0, True, '4'])
def test_unsupported_bit_raises(bit):
    with pytest.raises(ValueError, match=f'bit={bit!r}'):
        LSQFakeQuantize(bit=bit)


def test_check_bit_accepts_two_to_eight():
    assert [check_bit('owner', b) for b in range(2, 9)] == list(range(2, 9))


def test_mmrazor_qconfig_arguments():
    # QConfigHandler passes an observer class, a dtype and an int range.
    fake_quant = LSQFakeQuantize(
        observer=object,
        dtype=torch.qint8,
        quant_min=-8,
        quant_max=7,
        qscheme=torch.per_channel_symmetric,
        reduce_range=False,
        ch_axis=0,
    )
    assert fake_quant.bit == 4
    assert fake_quant.signed
    assert fake_quant.per_channel
    with pytest.raises(ValueError, match='quant_min=-127, quant_max=127'):
        LSQFakeQuantize(quant_min=-127, quant_max=127)


@pytest.mark.parametrize('cls', ALL_TYPES)
def test_state_dict_round_trip(cls):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 3)
    trained = cls(bit=3).train()
    trained(x)
    for param in trained.parameters():
        param.data.mul_(1.1)
    fresh = cls(bit=3)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.initialized.item() == 1
    fresh.train()
    assert torch.equal(fresh(x), trained(x))


def test_lazy_per_channel_loads_saved_channel_count():
    trained = LSQFakeQuantize(bit=4, per_channel=True).train()
    trained(torch.randn(5, 2, 3, 3))
    fresh = LSQFakeQuantize(bit=4, per_channel=True)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.scale.shape == (5,)
    assert torch.equal(fresh.scale, trained.scale)
