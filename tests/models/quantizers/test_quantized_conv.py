"""QuantConv2d: parameter sharing, exact float equality, BN folding."""

from __future__ import annotations

import copy

import torch
from mmcv.cnn import ConvModule
from torch import nn
from torch.ao.quantization import disable_fake_quant

from gabfusion_mm.models.fake_quants import (
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
)
from gabfusion_mm.models.quantizers import QuantConv2d, freeze_bn_stats


def _quant_conv(conv: nn.Conv2d) -> QuantConv2d:
    weight_fq = LSQFakeQuantize(
        bit=4, per_channel=True, num_channels=conv.out_channels
    )
    return QuantConv2d.from_float(conv, weight_fq, LSQPlusFakeQuantize(bit=4))


def test_from_float_shares_parameters_and_names():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    qconv = _quant_conv(conv)
    assert qconv.weight is conv.weight
    assert qconv.bias is conv.bias
    assert (qconv.stride, qconv.padding, qconv.groups) == ((2, 2), (1, 1), 2)
    keys = set(qconv.state_dict())
    assert {'weight', 'bias'} <= keys
    assert 'weight_fake_quant.scale' in keys
    assert 'input_fake_quant.offset' in keys


def test_disabled_equals_float_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    reference = copy.deepcopy(conv)
    qconv = _quant_conv(conv).train()
    qconv.apply(disable_fake_quant)
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(qconv(x), reference(x))


def test_quantizes_weight_and_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    qconv = _quant_conv(conv).train()
    x = torch.randn(2, 4, 9, 9)
    out = qconv(x)
    x_q = qconv.input_fake_quant(x)
    w_q = qconv.weight_fake_quant(conv.weight)
    expected = nn.functional.conv2d(x_q, w_q, conv.bias, padding=1)
    assert torch.allclose(out, expected)
    assert x_q.unique().numel() <= 16


def _conv_bn_module() -> ConvModule:
    module = ConvModule(
        3, 5, 3, padding=1, norm_cfg=dict(type='BN'), act_cfg=None
    )
    bn = module.bn
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    return module


def test_folded_bn_eval_equals_deployed_conv():
    torch.manual_seed(0)
    module = _conv_bn_module()
    qconv = _quant_conv(module.conv)
    module.conv = qconv
    qconv.fold_bn(module.bn)
    module.train()
    module(torch.randn(4, 3, 8, 8))  # initializes the fake quantizers
    module.eval()

    bn = module.bn
    x = torch.randn(2, 3, 8, 8)
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_weight = qconv.weight * factor.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * factor
    expected = nn.functional.conv2d(
        qconv.input_fake_quant(x),
        qconv.weight_fake_quant(folded_weight),
        bias,
        padding=1,
    )
    assert torch.allclose(module(x), expected, atol=1e-5)


def test_folded_bn_keeps_state_dict_keys():
    module = _conv_bn_module()
    keys_before = set(module.state_dict())
    module.conv = _quant_conv(module.conv)
    module.conv.fold_bn(module.bn)
    keys_after = set(module.state_dict())
    assert keys_before <= keys_after
    assert not any('folded_bn' in key for key in keys_after)


def test_folded_bn_disabled_equals_float_exactly():
    torch.manual_seed(0)
    module = _conv_bn_module()
    reference = copy.deepcopy(module)
    module.conv = _quant_conv(module.conv)
    module.conv.fold_bn(module.bn)
    module.apply(disable_fake_quant)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(module.train()(x), reference.train()(x))


def test_freeze_bn_stats_uses_running_statistics():
    module = _conv_bn_module()
    module.conv = _quant_conv(module.conv)
    module.conv.fold_bn(module.bn)
    module.apply(freeze_bn_stats)
    module.train()
    running_mean = module.bn.running_mean.clone()
    module(torch.randn(2, 3, 8, 8) * 5)
    assert not module.bn.training
    assert torch.equal(module.bn.running_mean, running_mean)


def test_deepcopy_keeps_folded_bn_inside_copy():
    module = _conv_bn_module()
    module.conv = _quant_conv(module.conv)
    module.conv.fold_bn(module.bn)
    copied = copy.deepcopy(module)
    assert copied.conv.folded_bn is copied.bn
    assert copied.conv.folded_bn is not module.bn
