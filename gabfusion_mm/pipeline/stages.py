"""Run a sequence of tool invocations that skip finished work.

Each stage runs one command (usually ``tools/train.py`` or ``tools/test.py``)
in a subprocess and is finished when its marker file exists. The marker is
written atomically after the command exits with status 0, so a run killed at
any point reruns only the unfinished stage. Training stages pass
``--resume``, so they continue from their last checkpoint. A stage's
reported time is its wall time summed over all runs, interrupted ones
included.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmengine.logging import print_log

from gabfusion_mm.compat import atomic_write_bytes


@dataclass
class Stage:
    """One step of a pipeline.

    Args:
        name (str): Unique stage name; also the marker file name.
        command (Sequence[str]): Command and arguments, run from the
            repository root.
        work_dir (Path): Folder of the stage's outputs.
        after (Callable[[], dict] | None): Called after a successful run;
            its dict is stored in the marker and returned on later runs.
    """

    name: str
    command: Sequence[str]
    work_dir: Path
    after: Callable[[], dict] | None = None
    result: dict = field(default_factory=dict)


class StageRunner:
    """Run stages in order, skipping those with a marker file.

    Args:
        root (Path): Pipeline work directory; markers go to ``root/stages``.
        repo_root (Path): Folder the commands run from.
    """

    def __init__(
        self,
        root: Path,
        repo_root: Path,
        plan: dict | None = None,
        heartbeat: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.repo_root = Path(repo_root)
        self.heartbeat = heartbeat
        self.marker_dir = self.root / 'stages'
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_work_dir(self.marker_dir / '.lock', self.root)
        if plan is not None:
            _check_plan(self.marker_dir / 'plan.json', plan, self.root)

    def marker(self, stage: Stage) -> Path:
        return self.marker_dir / f'{stage.name}.json'

    def run(self, stage: Stage) -> dict:
        """Run ``stage`` unless finished; return its stored result."""
        marker = self.marker(stage)
        if marker.is_file():
            stage.result = json.loads(marker.read_text())
            print_log(
                f'[{stage.name}] finished earlier, skipped', logger='current'
            )
            return stage.result

        stage.work_dir.mkdir(parents=True, exist_ok=True)
        log_file = stage.work_dir / f'{stage.name}.stdout.log'
        print_log(
            f'[{stage.name}] running: {" ".join(map(str, stage.command))}\n'
            f'[{stage.name}] output: {log_file}',
            logger='current',
        )
        partial = self.marker_dir / f'{stage.name}.partial'
        with _ElapsedClock(partial, self.heartbeat) as clock:
            self._stream(stage, log_file)
        elapsed = clock.total()

        result = stage.after() if stage.after is not None else {}
        result['seconds'] = round(elapsed, 1)
        atomic_write_bytes(json.dumps(result, indent=2).encode(), str(marker))
        partial.unlink(missing_ok=True)
        stage.result = result
        print_log(
            f'[{stage.name}] done in {elapsed / 60:.1f} min', logger='current'
        )
        return result

    def _stream(self, stage: Stage, log_file: Path) -> None:
        """Run the command, echo its output and keep a copy in a log."""
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [str(self.repo_root), env.get('PYTHONPATH', '')]
        )
        with open(log_file, 'a', encoding='utf-8') as log:
            # The child inherits the work-dir lock, so a child left running
            # by a killed pipeline still blocks a second pipeline.
            proc = subprocess.Popen(
                [str(c) for c in stage.command],
                cwd=self.repo_root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                pass_fds=(self._lock.fileno(),),
            )
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    if _worth_echoing(line):
                        sys.stdout.write(line)
                        sys.stdout.flush()
                code = proc.wait()
            finally:
                _stop(proc)
        if code != 0:
            raise RuntimeError(
                f'stage {stage.name} failed with exit code {code}; see '
                f'{log_file}. Fix the cause shown there and rerun: finished '
                f'stages are skipped and training resumes from its last '
                f'checkpoint.'
            )


def _stop(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` if it still runs (the pipeline was interrupted)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _lock_work_dir(path: Path, work_dir: Path):
    """Hold an exclusive lock on ``path`` for the life of the process.

    Raises:
        RuntimeError: Another pipeline (or a stage it left running) uses
            ``work_dir``.
    """
    handle = open(path, 'a')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f'{work_dir} is in use by another pipeline run or by a stage it '
            f'left running; wait for it to end, or stop it, then rerun'
        ) from None
    return handle


def _check_plan(path: Path, plan: dict, work_dir: Path) -> None:
    """Record ``plan`` on the first run; reject a different one later.

    Raises:
        ValueError: ``work_dir`` contains stages of a different plan.
    """
    if not path.is_file():
        atomic_write_bytes(json.dumps(plan, indent=2).encode(), str(path))
        return
    recorded = json.loads(path.read_text())
    if recorded != plan:
        raise ValueError(
            f'{work_dir} contains a run made with {recorded}, not {plan}. '
            f'Pass another work directory or delete this one.'
        )


class _ElapsedClock:
    """Wall time of a stage summed over interrupted and resumed runs.

    The running total is rewritten to ``path`` every ``period`` seconds,
    so a killed run loses at most that much of its count.
    """

    def __init__(self, path: Path, period: float = 10.0) -> None:
        self.path = path
        self.period = period
        self.before = float(path.read_text()) if path.is_file() else 0.0
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def total(self) -> float:
        return self.before + time.monotonic() - self.start

    def _beat(self) -> None:
        while not self._stop.wait(self.period):
            self._write()

    def _write(self) -> None:
        atomic_write_bytes(f'{self.total():.1f}'.encode(), str(self.path))

    def __enter__(self) -> _ElapsedClock:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._write()


def _worth_echoing(line: str) -> bool:
    """Keep the console to progress and metric lines of mmengine logs."""
    keys = ('Epoch(', 'Iter(', 'bbox_mAP', 'Error', 'error:', 'Saving')
    return any(key in line for key in keys)


def read_test_metrics(work_dir: Path) -> dict:
    """Return the metrics JSON that ``tools/test.py`` wrote last.

    Raises:
        FileNotFoundError: if ``work_dir`` contains no metrics file.
    """
    candidates = sorted(Path(work_dir).glob('*/*.json'))
    candidates = [p for p in candidates if p.stem == p.parent.name]
    if not candidates:
        raise FileNotFoundError(f'no test metrics JSON under {work_dir}')
    return json.loads(candidates[-1].read_text())
