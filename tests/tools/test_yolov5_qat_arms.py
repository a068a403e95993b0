"""The YOLOv5n QAT arms train through tools/train.py from a float run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import TINY_RUN_OPTIONS, requires_coco128

FLOAT_CONFIG = 'configs/yolov5/yolov5_n_1xb8-100e_coco128.py'
ARM_CONFIG = 'configs/yolov5/yolov5_n_w4a4-lsq_gabfusion-ada_coco128.py'

pytestmark = requires_coco128()


def test_gabfusion_ada_arm_trains_from_float(run_tool, tmp_path) -> None:
    float_dir = tmp_path / 'float'
    run_tool(
        'tools/train.py',
        FLOAT_CONFIG,
        '--work-dir',
        str(float_dir),
        '--cfg-options',
        *TINY_RUN_OPTIONS,
    )

    qat_dir = tmp_path / 'qat'
    qat_options = [
        option.replace('model.test_cfg', 'model.architecture.test_cfg')
        for option in TINY_RUN_OPTIONS
    ]
    proc = run_tool(
        'tools/train.py',
        ARM_CONFIG,
        '--work-dir',
        str(qat_dir),
        '--cfg-options',
        f'model.float_checkpoint={float_dir / "epoch_1.pth"}',
        *qat_options,
    )
    output = proc.stdout + proc.stderr

    scalars = next(Path(qat_dir).glob('*/vis_data/scalars.json'))
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    train = [r for r in records if 'loss' in r]
    assert [r['step'] for r in train] == [1, 2]
    assert any(key.startswith('distill.') for key in train[0])
    assert any(key.startswith('student.') for key in train[0])
    assert 'coco/bbox_mAP' in output

    state = torch.load(
        qat_dir / 'epoch_1.pth', map_location='cpu', weights_only=False
    )['state_dict']
    assert any('fake_quant' in key for key in state)
    assert any('fusions' in key for key in state)
