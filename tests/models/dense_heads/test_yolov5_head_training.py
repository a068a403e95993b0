"""YOLOv5 with GABFusion trains and validates through tools/train.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.conftest import TINY_RUN_OPTIONS, requires_coco128

CONFIG = 'configs/yolov5/yolov5_n_gabfusion_1xb8-100e_coco128.py'


@requires_coco128()
def test_gabfusion_yolov5n_trains_with_tools(run_tool, tmp_path: Path):
    run_tool(
        'tools/train.py',
        CONFIG,
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *TINY_RUN_OPTIONS,
    )

    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    scalars = run_dir / 'vis_data' / 'scalars.json'
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    train = [r for r in records if 'loss' in r]
    assert len(train) == 2
    for record in train:
        for name in ('loss_cls', 'loss_bbox', 'loss_obj'):
            assert math.isfinite(record[name]), record
    assert any('coco/bbox_mAP' in r for r in records)
    assert (tmp_path / 'epoch_1.pth').is_file()

    balance = json.loads((tmp_path / 'gabfusion_balance.json').read_text())
    assert len(balance['nodes']) == 4, balance['nodes'].keys()
