"""StageRunner: skipping, failures and time summed over resumed runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gabfusion_mm.pipeline import Stage, StageRunner, read_test_metrics
from tests.conftest import REPO_ROOT


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


def test_second_runner_on_work_dir_raises(tmp_path):
    first = StageRunner(tmp_path / 'run', tmp_path)
    with pytest.raises(RuntimeError, match='in use by another pipeline'):
        StageRunner(tmp_path / 'run', tmp_path)
    assert first.marker_dir.is_dir()


def test_other_plan_on_work_dir_raises(tmp_path):
    plan = {'model': 'nano', 'schedule': 'smoke'}
    runner = StageRunner(tmp_path / 'run', tmp_path, plan=plan)
    runner._lock.close()
    with pytest.raises(ValueError, match="'schedule': 'smoke'"):
        StageRunner(
            tmp_path / 'run', tmp_path, plan={**plan, 'schedule': 'default'}
        )


_KILLED_PIPELINE = """
import signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from gabfusion_mm.pipeline.stages import Stage, StageRunner
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
runner = StageRunner({run!r}, {repo!r}, heartbeat=0.2)
runner.run(Stage('sleep', [sys.executable, {child!r}], Path({run!r})))
"""
_SLEEPING_STAGE = """
import os, sys, time
open(sys.argv[0] + '.pid', 'w').write(str(os.getpid()))
time.sleep(120)
"""


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120.0
    while not path.is_file():
        assert proc.poll() is None, (
            f'the pipeline exited with {proc.returncode}'
        )
        assert time.monotonic() < deadline, f'{path} never appeared'
        time.sleep(0.1)


def test_terminated_run_stops_stage_and_keeps_time(tmp_path):
    run_dir = tmp_path / 'run'
    child = tmp_path / 'stage.py'
    child.write_text(_SLEEPING_STAGE)
    pid_file = tmp_path / 'stage.py.pid'
    script = tmp_path / 'pipeline.py'
    script.write_text(
        _KILLED_PIPELINE.format(
            repo=str(REPO_ROOT), run=str(run_dir), child=str(child)
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)])
    _wait_for(pid_file, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143

    child_pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    assert not (run_dir / 'stages' / 'sleep.json').exists()
    counted = float((run_dir / 'stages' / 'sleep.partial').read_text())
    assert counted >= 1.0

    # The rerun completes the stage and adds the time counted before.
    runner = StageRunner(run_dir, tmp_path)
    result = runner.run(
        Stage('sleep', [sys.executable, '-c', 'pass'], tmp_path)
    )
    assert result['seconds'] >= counted
