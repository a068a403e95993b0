"""mmrazor 1.0.0 imports and quantizes correctly on torch 2.x once
gabfusion_mm is imported."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from torch import nn

import gabfusion_mm  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'


class TensorForward(nn.Module):
    """Backbone, neck and head of a detector as one traceable module."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, inputs: torch.Tensor) -> tuple:
        feats = self.detector.neck(self.detector.backbone(inputs))
        return self.detector.bbox_head(feats)


def build_tensorrt_quantizer() -> nn.Module:
    from mmrazor.registry import MODELS

    qconfig = dict(
        w_observer=dict(type='mmrazor.PerChannelMinMaxObserver'),
        a_observer=dict(type='mmrazor.MovingAverageMinMaxObserver'),
        w_fake_quant=dict(type='mmrazor.FakeQuantize'),
        a_fake_quant=dict(type='mmrazor.FakeQuantize'),
        w_qscheme=dict(
            qdtype='qint8', bit=8, is_symmetry=True, is_symmetric_range=True
        ),
        a_qscheme=dict(
            qdtype='quint8', bit=8, is_symmetry=True, averaging_constant=0.1
        ),
    )
    return MODELS.build(
        dict(
            type='mmrazor.TensorRTQuantizer',
            global_qconfig=qconfig,
            tracer=dict(type='mmrazor.CustomTracer'),
        )
    )


def test_mmrazor_imports_after_package() -> None:
    code = (
        'import gabfusion_mm, mmrazor.models, mmrazor.engine;'
        'from mmrazor.models.quantizers import TensorRTQuantizer;'
        'from mmrazor.engine import QATEpochBasedLoop;'
        'print(TensorRTQuantizer.__name__, QATEpochBasedLoop.__name__)'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'TensorRTQuantizer QATEpochBasedLoop' in proc.stdout


def test_failed_early_import_recovers() -> None:
    code = (
        'try:\n'
        '    import mmrazor.models\n'
        'except ImportError as error:\n'
        '    print("upstream:", error)\n'
        'import gabfusion_mm\n'
        'import mmrazor.models\n'
        'print("imported")\n'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'upstream:' in proc.stdout
    assert 'imported' in proc.stdout


@pytest.fixture(scope='module')
def float_and_prepared() -> tuple[nn.Module, nn.Module]:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from torch.ao.quantization import disable_fake_quant, disable_observer

    register_all_modules()
    torch.manual_seed(0)
    cfg = Config.fromfile(str(TINY_CONFIG))
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    float_model = TensorForward(detector).eval()

    # Non-trivial BN statistics so that a wrong conv+BN fusion shows up.
    with torch.no_grad():
        for module in float_model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)

    quantizer = build_tensorrt_quantizer()
    prepared = quantizer.prepare(copy.deepcopy(float_model))
    prepared.apply(disable_fake_quant)
    prepared.apply(disable_observer)
    prepared.eval()
    return float_model, prepared


def test_prepared_yolox_fuses_every_conv_bn(float_and_prepared) -> None:
    from torch.ao.nn.intrinsic.qat import ConvBn2d

    float_model, prepared = float_and_prepared
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in float_model.modules())
    num_conv_bn = sum(isinstance(m, ConvBn2d) for m in prepared.modules())
    # A BN that was not fused is called on its own by the traced graph.
    modules = dict(prepared.named_modules())
    leftover_bn = [
        node.target
        for node in prepared.graph.nodes
        if node.op == 'call_module'
        and isinstance(modules[node.target], nn.BatchNorm2d)
    ]
    assert num_bn > 50
    assert num_conv_bn == num_bn
    assert leftover_bn == []


def test_prepared_yolox_equals_float(float_and_prepared) -> None:
    float_model, prepared = float_and_prepared
    inputs = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = float_model(inputs)
        actual = prepared(inputs)

    flat_expected = [t for level in expected for t in level]
    flat_actual = [t for level in actual for t in level]
    assert len(flat_actual) == len(flat_expected) == 9
    for exp, act in zip(flat_expected, flat_actual):
        assert act.shape == exp.shape
        torch.testing.assert_close(act, exp, atol=1e-5, rtol=1e-5)
