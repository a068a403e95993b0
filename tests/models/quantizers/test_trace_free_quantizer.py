"""TraceFreeQuantizer on real mmdet detectors and the GABFusion necks."""

from __future__ import annotations

import copy

import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import DefaultScope
from mmrazor.registry import MODELS
from torch import nn
from torch.ao.quantization import disable_fake_quant
from torch.utils._pytree import tree_leaves

from gabfusion_mm.models.fake_quants import (
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
    PACTFakeQuantize,
)
from gabfusion_mm.models.quantizers import (
    QuantConv2d,
    TraceFreeQuantizer,
    find_input_fake_quant,
    find_input_fake_quants,
    freeze_bn_stats,
    quantized_convs,
)
from gabfusion_mm.models.quantizers.utils import format_quant_table

YOLOX_CONFIG = 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
GAB_YOLOX_CONFIG = (
    'configs/gabfusion/yolox_tiny_gabfusion_1xb8-100e_coco128.py'
)
YOLOX_PREDICTIONS = [
    f'bbox_head.multi_level_conv_{kind}.{level}'
    for kind in ('cls', 'reg', 'obj')
    for level in range(3)
]


def _narrow_yolox(cfg: Config) -> dict:
    model = cfg.model
    model.backbone.widen_factor = 0.125
    model.neck.in_channels = [32, 64, 128]
    model.neck.out_channels = 32
    model.bbox_head.in_channels = 32
    model.bbox_head.feat_channels = 32
    return model


def build_detector(name: str) -> nn.Module:
    """Build a small detector with initialized weights."""
    if name in ('yolox', 'gab_yolox'):
        path = YOLOX_CONFIG if name == 'yolox' else GAB_YOLOX_CONFIG
        model_cfg = _narrow_yolox(Config.fromfile(path))
    elif name == 'yolov3':
        model_cfg = get_config(
            'mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py'
        ).model
        model_cfg.backbone.init_cfg = None
    else:
        model_cfg = get_config('mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py')
        model_cfg = model_cfg.model
        model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(model_cfg)
    model.init_weights()
    return model


def _tensor_outputs(model: nn.Module, x: torch.Tensor) -> list:
    return tree_leaves(model(x, mode='tensor'))


@pytest.fixture(scope='module')
def yolox() -> nn.Module:
    torch.manual_seed(0)
    return build_detector('yolox')


def test_every_yolox_conv_quantized_with_exceptions(yolox):
    model = copy.deepcopy(yolox)
    assert TraceFreeQuantizer().prepare(model) is model

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    convs = dict(quantized_convs(model))
    assert len(names) == 83
    assert sorted(convs) == sorted(names)
    for name, conv in convs.items():
        special = name == names[0] or name in YOLOX_PREDICTIONS
        bits = 8 if special else 4
        assert conv.weight_fake_quant.bit == bits, name
        assert conv.input_fake_quant.bit == bits, name
        assert isinstance(conv.weight_fake_quant, LSQFakeQuantize)
        assert conv.weight_fake_quant.per_channel
        assert isinstance(conv.input_fake_quant, LSQPlusFakeQuantize)
    assert names[0] == 'backbone.stem.conv.conv'


def test_disabled_equals_float_yolox_exactly(yolox):
    model = TraceFreeQuantizer().prepare(copy.deepcopy(yolox))
    x = torch.rand(2, 3, 128, 128) * 255
    model.train()
    with torch.no_grad():
        model(x, mode='tensor')  # initializes every fake quantizer
    model.eval().apply(disable_fake_quant)
    # The training forward also moved the BN statistics; copy them.
    reference = copy.deepcopy(yolox).eval()
    result = reference.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == []
    assert all('fake_quant' in key for key in result.unexpected_keys)
    with torch.no_grad():
        outputs = _tensor_outputs(model, x)
        expected = _tensor_outputs(reference, x)
    for out, ref in zip(outputs, expected):
        assert torch.equal(out, ref)


@pytest.mark.parametrize('name', ['yolov3', 'rtmdet', 'gab_yolox'])
def test_other_detectors_fully_quantized(name):
    torch.manual_seed(0)
    model = build_detector(name)
    float_convs = {
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
    }
    TraceFreeQuantizer().prepare(model)
    assert {n for n, _ in quantized_convs(model)} == float_convs
    remaining = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not isinstance(m, QuantConv2d)
    ]
    assert remaining == []
    model.eval()
    with torch.no_grad():
        outputs = _tensor_outputs(model, torch.rand(1, 3, 128, 128) * 255)
    assert all(torch.isfinite(out).all() for out in outputs)


def test_rtmdet_shared_convs_stay_shared():
    model = build_detector('rtmdet')
    head = model.bbox_head
    assert head.cls_convs[1][0].conv is head.cls_convs[0][0].conv
    TraceFreeQuantizer().prepare(model)
    shared = head.cls_convs[0][0].conv
    assert isinstance(shared, QuantConv2d)
    assert head.cls_convs[1][0].conv is shared
    assert head.cls_convs[2][0].conv is shared


def test_gabfusion_neck_trains_quantized():
    torch.manual_seed(0)
    model = build_detector('gab_yolox')
    TraceFreeQuantizer(w_bits=3, a_bits=3).prepare(model)
    model.train()
    outputs = _tensor_outputs(model, torch.rand(2, 3, 128, 128) * 255)
    sum(out.sum() for out in outputs).backward()
    grads = [p.grad for n, p in model.named_parameters() if 'fake_quant' in n]
    assert grads and all(g is not None for g in grads)


def test_overrides_and_float_exceptions(yolox):
    model = copy.deepcopy(yolox)
    quantizer = TraceFreeQuantizer(
        a_fake_quant=dict(type='PACTFakeQuantize'),
        overrides=[
            dict(pattern=r'neck\.out_convs\..*', w_bits=6, a_bits=5),
            dict(pattern=r'neck\.out_convs\.2\.conv', quantize_input=False),
            dict(
                pattern=r'bbox_head\.multi_level_conv_obj\..', quantize=False
            ),
        ],
    )
    quantizer.prepare(model)
    out0 = model.neck.out_convs[0].conv
    assert (out0.weight_fake_quant.bit, out0.input_fake_quant.bit) == (6, 5)
    assert isinstance(out0.input_fake_quant, PACTFakeQuantize)
    assert model.neck.out_convs[2].conv.input_fake_quant is None
    for level in range(3):
        conv = model.bbox_head.multi_level_conv_obj[level]
        assert type(conv) is nn.Conv2d
    model.train()
    _tensor_outputs(model, torch.rand(1, 3, 64, 64) * 255)


def test_fold_bn_attaches_batch_norms(yolox):
    model = TraceFreeQuantizer(fold_bn=True).prepare(copy.deepcopy(yolox))
    stem = model.backbone.stem.conv
    assert stem.conv.folded_bn is stem.bn
    # Prediction convs have no batch norm after them.
    assert model.bbox_head.multi_level_conv_cls[0].folded_bn is None
    model.apply(freeze_bn_stats)
    assert stem.conv.bn_frozen


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(w_bits=9), 'w_bits=9'),
        (dict(a_bits=1), 'a_bits=1'),
        (dict(first_conv=dict(w_bits=16)), 'w_bits=16'),
        (dict(a_fake_quant=dict(type='NoSuchFakeQuantize')), 'NoSuch'),
        (dict(w_fake_quant=dict(type='FakeQuantize')), 'FakeQuantize'),
        (dict(w_fake_quant=dict(type='LSQFakeQuantize', bit=4)), 'bit=4'),
        (dict(overrides=[dict(pattern='(')]), "pattern='\\('"),
        (dict(overrides=[dict(pattern='x', bits=4)]), 'bits'),
        (dict(overrides=[dict(w_bits=4)]), 'pattern'),
    ],
)
def test_bad_config_raises_at_build(kwargs, match):
    cfg = dict(type='mmrazor.TraceFreeQuantizer', **kwargs)
    with pytest.raises((ValueError, KeyError, TypeError), match=match):
        MODELS.build(cfg)


def test_pattern_matching_nothing_raises(yolox):
    quantizer = TraceFreeQuantizer(
        overrides=[dict(pattern=r'neck\.no_such_layer.*', w_bits=8)]
    )
    with pytest.raises(ValueError, match='no_such_layer'):
        quantizer.prepare(copy.deepcopy(yolox))


def test_prepare_twice_raises(yolox):
    quantizer = TraceFreeQuantizer()
    model = quantizer.prepare(copy.deepcopy(yolox))
    with pytest.raises(RuntimeError, match='already contains QuantConv2d'):
        quantizer.prepare(model)


def test_find_input_fake_quant(yolox):
    model = TraceFreeQuantizer().prepare(copy.deepcopy(yolox))
    head = model.bbox_head
    expected = head.multi_level_cls_convs[1][0].conv.input_fake_quant
    assert find_input_fake_quant(
        model, 'bbox_head.multi_level_cls_convs.1'
    ) is (expected)
    assert (
        find_input_fake_quant(
            model, 'bbox_head.multi_level_cls_convs.1.0.conv'
        )
        is expected
    )
    found = find_input_fake_quants(
        model, [f'bbox_head.multi_level_cls_convs.{i}' for i in range(3)]
    )
    assert len({id(f) for f in found}) == 3
    assert isinstance(found[0].scale, torch.Tensor)
    with pytest.raises(LookupError, match='no module named'):
        find_input_fake_quant(model, 'bbox_head.no_such')
    with pytest.raises(LookupError, match='contains no QuantConv2d'):
        find_input_fake_quant(model, 'bbox_head.loss_cls')


def test_format_quant_table():
    table = format_quant_table([('a.conv', 'LSQ 4b', 'LSQ+ 4b', '-')])
    lines = table.splitlines()
    assert lines[0].split() == ['module', 'weight', 'input', 'rules']
    assert lines[2].split() == ['a.conv', 'LSQ', '4b', 'LSQ+', '4b', '-']
