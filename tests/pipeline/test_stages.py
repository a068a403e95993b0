"""StageRunner: skipping, failures and time summed over resumed runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gabfusion_mm.pipeline import Stage, StageRunner, read_test_metrics


def _write_command(path: Path, text: str) -> list[str]:
    code = f'open({str(path)!r}, "a").write({text!r})'
    return [sys.executable, '-c', code]


def test_finished_stage_is_skipped(tmp_path):
    out = tmp_path / 'out.txt'
    runner = StageRunner(tmp_path / 'run', tmp_path)
    stage = Stage('write', _write_command(out, 'x'), tmp_path / 'stage')

    first = runner.run(stage)
    second = runner.run(
        Stage('write', _write_command(out, 'x'), tmp_path / 'stage')
    )

    assert out.read_text() == 'x'
    assert second == first
    assert (tmp_path / 'run' / 'stages' / 'write.json').is_file()


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    runner = StageRunner(tmp_path / 'run', tmp_path)
    failing = Stage(
        'step', [sys.executable, '-c', 'raise SystemExit(3)'], tmp_path
    )
    with pytest.raises(RuntimeError, match='exit code 3'):
        runner.run(failing)
    assert not (tmp_path / 'run' / 'stages' / 'step.json').exists()

    out = tmp_path / 'out.txt'
    runner.run(Stage('step', _write_command(out, 'done'), tmp_path))
    assert out.read_text() == 'done'


def test_time_of_interrupted_runs_is_added(tmp_path):
    runner = StageRunner(tmp_path / 'run', tmp_path)
    # A killed run left 100 s in the partial record.
    (tmp_path / 'run' / 'stages' / 'step.partial').write_text('100.0')
    result = runner.run(
        Stage('step', [sys.executable, '-c', 'pass'], tmp_path)
    )
    assert 100.0 <= result['seconds'] < 160.0
    assert not (tmp_path / 'run' / 'stages' / 'step.partial').exists()


def test_after_result_is_stored(tmp_path):
    runner = StageRunner(tmp_path / 'run', tmp_path)
    result = runner.run(
        Stage(
            'step',
            [sys.executable, '-c', 'pass'],
            tmp_path,
            after=lambda: {'coco/bbox_mAP': 0.25},
        )
    )
    marker = json.loads((tmp_path / 'run/stages/step.json').read_text())
    assert marker['coco/bbox_mAP'] == result['coco/bbox_mAP'] == 0.25


def test_read_test_metrics_takes_latest_run(tmp_path):
    for stamp, value in (('20260101_000000', 0.1), ('20260102_000000', 0.2)):
        run_dir = tmp_path / stamp
        run_dir.mkdir()
        (run_dir / f'{stamp}.json').write_text(json.dumps({'m': value}))
    assert read_test_metrics(tmp_path) == {'m': 0.2}
    with pytest.raises(FileNotFoundError, match='no test metrics'):
        read_test_metrics(tmp_path / 'missing')
