"""Every quantizer of configs/qat prepares YOLOv5 and trains it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmrazor.registry import MODELS
from torch.ao.quantization import (
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)

from gabfusion_mm.models.quantizers import QuantConv2d
from tests.conftest import REPO_ROOT

FLOAT_CONFIG = REPO_ROOT / 'configs/yolov5/yolov5_n_1xb8-100e_coco128.py'
SIZE = 64


def _quantizer_configs() -> dict[str, dict]:
    """One quantizer config per distinct quantizer in configs/qat.

    Configs that differ only in bit widths count as one.
    """
    found = {}
    for path in sorted((REPO_ROOT / 'configs/qat').glob('*.py')):
        quantizer = Config.fromfile(str(path)).model.quantizer.to_dict()
        qconfig = quantizer.get('global_qconfig', quantizer)
        key = '-'.join(
            [
                quantizer['type'],
                qconfig['w_fake_quant']['type'],
                qconfig['a_fake_quant']['type'],
            ]
        )
        found.setdefault(key, quantizer)
    return found


QUANTIZERS = _quantizer_configs()


def _narrow_yolov5_cfg() -> Config:
    """YOLOv5n at widen factor 0.125 (neck channels 32, 64, 128)."""
    model = copy.deepcopy(Config.fromfile(str(FLOAT_CONFIG)).model)
    channels = [32, 64, 128]
    model.backbone.widen_factor = 0.125
    model.neck.in_channels = channels
    model.bbox_head.in_channels = channels
    model.test_cfg.update(score_thr=0.0, nms_pre=200, max_per_img=20)
    model._scope_ = 'mmdet'
    return model


def _batch():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    samples = []
    for _ in range(2):
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(SIZE, SIZE),
                ori_shape=(SIZE, SIZE),
                pad_shape=(SIZE, SIZE),
                batch_input_shape=(SIZE, SIZE),
                scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[6.0, 10.0, 40.0, 50.0]]),
            labels=torch.tensor([2]),
        )
        samples.append(sample)
    return inputs, samples


@pytest.fixture(scope='module')
def float_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(_narrow_yolov5_cfg())
    model.init_weights()
    path = tmp_path_factory.mktemp('float') / 'yolov5n_narrow.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return str(path)


def _build_qat(quantizer: dict, checkpoint: str):
    with DefaultScope.overwrite_default_scope('mmrazor'):
        return MODELS.build(
            dict(
                type='DetectorQAT',
                architecture=_narrow_yolov5_cfg(),
                quantizer=copy.deepcopy(quantizer),
                float_checkpoint=checkpoint,
                input_shapes=(1, 3, SIZE, SIZE),
            )
        )


def test_configs_qat_has_quantizers():
    # LSQ, PACT and N2UQ (trace-free) and mmrazor's FX quantizers.
    assert len(QUANTIZERS) >= 4, sorted(QUANTIZERS)


def _check_off_equals_float(model, checkpoint: str) -> None:
    """With fake quantization and observers off, the float outputs return.

    Traced graphs fold BN into the convolution, which changes the result by
    round-off only.
    """
    from mmengine.runner import load_checkpoint

    with DefaultScope.overwrite_default_scope('mmdet'):
        reference = MODELS.build(_narrow_yolov5_cfg())
    load_checkpoint(reference, checkpoint, strict=True, logger='silent')
    reference.eval()
    model.eval()
    model.apply(disable_fake_quant)
    model.apply(disable_observer)

    inputs, samples = _batch()
    with torch.no_grad():
        (outputs,) = model(inputs, samples, mode='tensor')
        (expected,) = reference(inputs, samples, mode='tensor')

    for out, ref in zip(outputs, expected):
        if model.trace_free:
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    model.apply(enable_fake_quant)
    model.apply(enable_observer)


@pytest.mark.parametrize('name', sorted(QUANTIZERS))
def test_quantizer_prepares_yolov5(name, float_checkpoint):
    model = _build_qat(QUANTIZERS[name], float_checkpoint)

    if model.trace_free:
        detector = model.architecture
        convs = [
            m for m in detector.modules() if isinstance(m, torch.nn.Conv2d)
        ]
        assert convs
        assert all(isinstance(c, QuantConv2d) for c in convs)
    else:
        graph = model.qmodels['tensor']
        fake_quants = [n for n, _ in graph.named_modules() if 'fake' in n]
        assert fake_quants

    _check_off_equals_float(model, float_checkpoint)

    model.train()
    inputs, samples = _batch()
    losses = model(inputs, samples, mode='loss')
    sum(losses.values()).backward()
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_obj'}
    assert all(math.isfinite(v.item()) for v in losses.values()), losses

    model.eval()
    with torch.no_grad():
        results = model(inputs, samples, mode='predict')
    assert len(results) == 2
    assert len(results[0].pred_instances.bboxes) > 0
