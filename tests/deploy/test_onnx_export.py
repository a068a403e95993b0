"""QDQ export of a W4A4 YOLOX-tiny and its onnxruntime evaluation.

The quantized detector is built directly, without training. The
trace-free quantizer of the W4A4 LSQ config prepares a narrow YOLOX-tiny,
and one training-mode forward initializes the fake quantizers from
COCO128 images. The steps are then spread slightly, as training would
spread them, so that no two quantizers share a grid. The export and
evaluation tools run in-process through their command lines.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from onnx import numpy_helper

from gabfusion_mm.deploy.onnx_check import compare_onnx_with_pytorch
from gabfusion_mm.deploy.onnx_eval import build_float_detector, evaluate_onnx
from gabfusion_mm.deploy.onnx_export import (
    export_detector_onnx,
    load_detector_state,
)
from gabfusion_mm.deploy.qdq_convert import fake_quant_modules
from tests.conftest import REPO_ROOT, requires_coco128

pytestmark = requires_coco128()

CONFIG = str(REPO_ROOT / 'configs/qat/yolox_tiny_w4a4-lsq_qat_coco128.py')
# A narrow YOLOX-tiny (widen factor 0.125), boxes from an untrained model,
# and a 4-image test set in batches of 2.
OPTIONS = {
    'model.architecture.backbone.widen_factor': 0.125,
    'model.architecture.neck.in_channels': [32, 64, 128],
    'model.architecture.neck.out_channels': 32,
    'model.architecture.bbox_head.in_channels': 32,
    'model.architecture.bbox_head.feat_channels': 32,
    'model.architecture.test_cfg.score_thr': 0.0,
    'test_dataloader.batch_size': 2,
    'test_dataloader.num_workers': 0,
    'test_dataloader.persistent_workers': False,
    'test_dataloader.dataset.indices': 4,
}


def cli_options() -> list[str]:
    """Return OPTIONS as ``--cfg-options`` arguments."""
    args = []
    for key, value in OPTIONS.items():
        if isinstance(value, list):
            value = '[' + ','.join(str(v) for v in value) + ']'
        args.append(f'{key}={value}')
    return args


def run_tool(script: str, *args: str) -> int:
    """Run ``tools/<script>`` in this process and return its exit code."""
    argv = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(REPO_ROOT / script), run_name='__main__')
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = argv
    return 0


def build_test_cfg() -> Config:
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(OPTIONS)
    return cfg


@pytest.fixture(scope='module')
def quantized(tmp_path_factory) -> dict:
    """A W4A4 quantized detector, its checkpoint and a test batch."""
    from mmrazor.registry import MODELS

    torch.manual_seed(0)
    cfg = build_test_cfg()
    detector = build_float_detector(cfg)
    quantizer = MODELS.build(dict(cfg.model.quantizer, _scope_='mmrazor'))
    detector = quantizer.prepare(detector)

    batch = next(iter(Runner.build_dataloader(cfg.test_dataloader)))
    with torch.no_grad():
        inputs = detector.data_preprocessor(batch, False)['inputs']
        detector.train()
        detector._forward(inputs)
        detector.eval()
        for index, fake_quant in enumerate(
            fake_quant_modules(detector).values()
        ):
            fake_quant.scale.mul_(1 + 1e-3 * index)

    checkpoint = tmp_path_factory.mktemp('qat') / 'qat.pth'
    torch.save(dict(state_dict=detector.state_dict()), checkpoint)
    return dict(
        cfg=cfg, detector=detector, inputs=inputs, checkpoint=checkpoint
    )


@pytest.fixture(scope='module')
def exported(quantized, tmp_path_factory) -> Path:
    """The ONNX file written by tools/deploy/export_onnx.py."""
    out = tmp_path_factory.mktemp('onnx') / 'yolox_w4a4.onnx'
    code = run_tool(
        'tools/deploy/export_onnx.py',
        CONFIG,
        str(quantized['checkpoint']),
        '--out',
        str(out),
        '--cfg-options',
        *cli_options(),
    )
    assert code == 0
    return out


def test_checkpoint_reloads_every_entry(quantized):
    state = load_detector_state(str(quantized['checkpoint']))

    assert state.keys() == quantized['detector'].state_dict().keys()


def test_one_qdq_pair_per_fake_quant(quantized, exported):
    model = onnx.load(str(exported))
    summary = json.loads(
        exported.with_name('yolox_w4a4_export.json').read_text()
    )
    ops = [node.op_type for node in model.graph.node]
    zero_types = {
        onnx.TensorProto.DataType.Name(init.data_type)
        for init in model.graph.initializer
        if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
        or init.data_type == onnx.TensorProto.INT8
    }
    num_fake_quants = len(fake_quant_modules(quantized['detector']))

    # 83 convolutions, each with a weight and an input fake quantizer.
    assert num_fake_quants == 166
    assert ops.count('QuantizeLinear') == num_fake_quants
    assert ops.count('DequantizeLinear') == num_fake_quants
    assert summary['num_quantize_linear'] == num_fake_quants
    # 4-bit weights (INT4), 4-bit LSQ+ inputs (UINT4), 8-bit first and
    # prediction convolutions (INT8).
    assert zero_types == {'INT4', 'UINT4', 'INT8'}


def test_onnxruntime_matches_pytorch_within_one_step(quantized, exported):
    report = compare_onnx_with_pytorch(
        str(exported), quantized['detector'], quantized['inputs']
    )
    summary = json.loads(
        exported.with_name('yolox_w4a4_export.json').read_text()
    )

    assert report.forced.num_tensors == 83
    assert report.forced.max_steps <= 1.001
    assert report.forced.step_fraction <= 1e-3
    assert len(report.outputs) == 9
    for output in report.outputs:
        assert output.forced_max_abs_diff <= output.tolerance, output.name
    assert report.passed
    assert summary['passed'] is True
    assert summary['max_abs_diff'] == pytest.approx(report.max_abs_diff)


def test_check_fails_on_wrong_activation_scale(quantized, exported, tmp_path):
    model = onnx.load(str(exported))
    initializers = {init.name: init for init in model.graph.initializer}
    # The first QuantizeLinear with a UINT4 zero point quantizes a 4-bit
    # LSQ+ activation; its scale is shared with its DequantizeLinear only.
    node = next(
        n
        for n in model.graph.node
        if n.op_type == 'QuantizeLinear'
        and initializers[n.input[2]].data_type == onnx.TensorProto.UINT4
    )
    scale = initializers[node.input[1]]
    wrong = numpy_helper.to_array(scale) * 1.5
    scale.CopyFrom(numpy_helper.from_array(wrong, scale.name))
    tampered = tmp_path / 'tampered.onnx'
    onnx.save(model, str(tampered))

    report = compare_onnx_with_pytorch(
        str(tampered), quantized['detector'], quantized['inputs']
    )

    assert report.forced.step_fraction > 1e-3
    assert not report.passed


def test_onnx_evaluation_returns_coco_metrics(quantized, exported, tmp_path):
    metrics = evaluate_onnx(quantized['cfg'], str(exported))
    code = run_tool(
        'tools/deploy/test_onnx.py',
        CONFIG,
        str(exported),
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *cli_options(),
    )
    written = json.loads((tmp_path / 'onnx_metrics.json').read_text())

    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    assert 0.0 <= metrics['coco/bbox_mAP_50'] <= 1.0
    assert code == 0
    assert written['coco/bbox_mAP'] == metrics['coco/bbox_mAP']


def test_export_rejects_opset_without_int4(tmp_path):
    with pytest.raises(ValueError, match='opset=20 is too old'):
        export_detector_onnx(
            torch.nn.Identity(),
            torch.zeros(1, 3, 32, 32),
            str(tmp_path / 'model.onnx'),
            opset=20,
        )
