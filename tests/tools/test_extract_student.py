"""Tests for tools/deploy/extract_student.py on a GABFusion + ADA arm."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmrazor.registry import MODELS

from tests.conftest import REPO_ROOT

CONFIG = (
    REPO_ROOT
    / 'configs/gabfusion_qat/yolox_tiny_w4a4-lsq_gabfusion-ada_coco128.py'
)
TOOL = 'tools/deploy/extract_student.py'


def _build(cfg, scope: str):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


@pytest.fixture(scope='module')
def trained_checkpoint(tmp_path_factory):
    """A QATDistill checkpoint whose fake quants were initialized."""
    folder = tmp_path_factory.mktemp('extract')
    cfg = Config.fromfile(CONFIG)
    teacher = _build(cfg.model.teacher, 'mmdet')
    float_path = folder / 'float.pth'
    torch.save(dict(state_dict=teacher.state_dict()), float_path)

    cfg.model.float_checkpoint = str(float_path)
    model = _build(cfg.model, 'mmrazor')
    model.train()
    inputs = torch.randn(2, 3, 128, 128, generator=torch.Generator())
    model.student(inputs, mode='tensor')

    path = folder / 'qat.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=3)), path)
    return path, model


def test_output_loads_into_plain_config(
    run_tool, trained_checkpoint, tmp_path
):
    path, model = trained_checkpoint
    out = tmp_path / 'student.pth'
    proc = run_tool(TOOL, str(CONFIG), str(path), str(out))
    assert 'strict load' in proc.stdout

    plain_cfg = Config.fromfile(CONFIG).model.architecture
    detector = _build(plain_cfg, 'mmdet')
    load_checkpoint(detector, str(out), strict=True, logger='silent')
    for key, value in model.student.state_dict().items():
        if key in detector.state_dict():
            assert torch.equal(detector.state_dict()[key], value), key

    checkpoint = torch.load(out)
    quant_state = checkpoint['quantizer_state_dict']
    expected = model.student_state_dict()[1]
    assert set(quant_state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(quant_state[key], value), key
    assert any(key.endswith('input_fake_quant.scale') for key in quant_state)
    assert checkpoint['meta']['epoch'] == 3

    # Same entries, in the same order, as the algorithm's own split.
    plain, _ = model.student_state_dict()
    assert list(checkpoint['state_dict']) == list(plain)


def test_float_checkpoint_rejected(trained_checkpoint, tmp_path):
    path, model = trained_checkpoint
    float_only = tmp_path / 'float_only.pth'
    torch.save(dict(state_dict=model.teacher.state_dict()), float_only)
    out = tmp_path / 'out.pth'
    proc = subprocess.run(
        [sys.executable, TOOL, str(CONFIG), str(float_only), str(out)],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert 'not a QATDistill checkpoint' in proc.stderr
    assert not out.exists()
