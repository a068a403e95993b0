"""tools/train.py and tools/test.py on COCO128, as a user runs them."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN_OPTIONS, requires_coco128

CONFIG = 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'

pytestmark = requires_coco128()


def read_scalars(work_dir: Path) -> list[dict]:
    """Return the records of the newest run's scalars.json."""
    runs = sorted(p for p in work_dir.iterdir() if p.is_dir())
    scalars = runs[-1] / 'vis_data' / 'scalars.json'
    return [json.loads(line) for line in scalars.read_text().splitlines()]


@pytest.fixture(scope='module')
def trained_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('train')


def test_train_two_iterations_with_coco_metric(run_tool, trained_dir) -> None:
    proc = run_tool(
        'tools/train.py',
        CONFIG,
        '--work-dir',
        str(trained_dir),
        '--cfg-options',
        *TINY_RUN_OPTIONS,
    )
    output = proc.stdout + proc.stderr

    records = read_scalars(trained_dir)
    train_steps = [r['step'] for r in records if 'loss' in r]
    val_records = [r for r in records if 'coco/bbox_mAP' in r]
    assert train_steps == [1, 2]
    assert len(val_records) == 1
    assert 0.0 <= val_records[0]['coco/bbox_mAP_50'] <= 1.0
    assert 'eta:' in output
    assert (trained_dir / 'epoch_1.pth').is_file()
    assert (
        (trained_dir / 'last_checkpoint')
        .read_text()
        .strip()
        .endswith('epoch_1.pth')
    )


def test_test_tool_on_saved_checkpoint(run_tool, trained_dir, tmp_path):
    checkpoint = trained_dir / 'epoch_1.pth'
    out_file = tmp_path / 'predictions.pkl'
    proc = run_tool(
        'tools/test.py',
        CONFIG,
        str(checkpoint),
        '--work-dir',
        str(tmp_path / 'test'),
        '--out',
        str(out_file),
        '--cfg-options',
        *TINY_RUN_OPTIONS,
    )
    output = proc.stdout + proc.stderr

    with open(out_file, 'rb') as f:
        predictions = pickle.load(f)
    assert 'coco/bbox_mAP' in output
    assert len(predictions) == 4
    assert {'img_id', 'pred_instances'} <= set(predictions[0])
    assert len(predictions[0]['pred_instances']['bboxes']) > 0


def test_resume_continues_from_last_epoch(run_tool, trained_dir, tmp_path):
    work_dir = tmp_path / 'resume'
    shutil.copytree(trained_dir, work_dir)
    # The copied last_checkpoint names the original path; point it here.
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    options = [o for o in TINY_RUN_OPTIONS if 'max_epochs' not in o]

    proc = run_tool(
        'tools/train.py',
        CONFIG,
        '--work-dir',
        str(work_dir),
        '--resume',
        '--cfg-options',
        'train_cfg.max_epochs=2',
        *options,
    )
    output = proc.stdout + proc.stderr

    assert 'resumed epoch: 1, iter: 2' in output
    assert (work_dir / 'epoch_2.pth').is_file()
    train_steps = [r['step'] for r in read_scalars(work_dir) if 'loss' in r]
    assert train_steps == [3, 4]


def test_train_rejects_auto_scale_lr_without_base(run_tool, tmp_path):
    with pytest.raises(pytest.fail.Exception, match='base_batch_size'):
        run_tool(
            'tools/train.py',
            CONFIG,
            '--auto-scale-lr',
            '--work-dir',
            str(tmp_path),
            '--cfg-options',
            'auto_scale_lr.base_batch_size=0',
        )


def test_distributed_two_process_cpu_run(run_tool, tmp_path) -> None:
    proc = run_tool(
        'tools/train.py',
        CONFIG,
        '--launcher',
        'pytorch',
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *TINY_RUN_OPTIONS,
        'train_dataloader.batch_size=1',
        launcher=(
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--nproc_per_node=2',
            '--master_port=29531',
        ),
        env={'OMP_NUM_THREADS': '1'},
    )
    output = proc.stdout + proc.stderr

    assert 'Distributed launcher: pytorch' in output
    assert 'Distributed training: True' in output
    assert 'GPU number: 2' in output or 'world_size: 2' in output
    assert (tmp_path / 'epoch_1.pth').is_file()
    records = read_scalars(tmp_path)
    assert [r['step'] for r in records if 'loss' in r] == [1, 2]
