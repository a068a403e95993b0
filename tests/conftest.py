"""Shared fixtures: repository paths and a runner for the command-line tools.

Tools run as subprocesses, as users run them, so each test sees a fresh
registry scope and the real argument parsing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO128_ROOT = REPO_ROOT / 'data' / 'coco128'
VOC_SAMPLE_ROOT = REPO_ROOT / 'tests' / 'data' / 'VOCdevkit'

# --cfg-options that shrink a COCO128 config to a few images, batch 2, one
# epoch, single-process data loading and boxes from an untrained model.
TINY_RUN_OPTIONS = (
    'train_cfg.max_epochs=1',
    'train_cfg.val_interval=1',
    'train_dataloader.batch_size=2',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'train_dataloader.dataset.indices=4',
    'val_dataloader.batch_size=2',
    'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False',
    'val_dataloader.dataset.indices=4',
    'test_dataloader.batch_size=2',
    'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'test_dataloader.dataset.indices=4',
    'model.test_cfg.score_thr=0.0',
    'default_hooks.logger.interval=1',
)


def requires_coco128() -> pytest.MarkDecorator:
    """Skip a test when COCO128 is not linked under data/."""
    return pytest.mark.skipif(
        not (COCO128_ROOT / 'annotations').is_dir(),
        reason='COCO128 not found under data/coco128 (see README, Data)',
    )


@pytest.fixture
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    """Return a function that runs ``tools/<script>`` and checks its exit.

    The function takes the script path relative to the repository root and
    its arguments, runs it with this interpreter from the repository root,
    and returns the completed process. A non-zero exit fails the test with
    the tail of the output.
    """

    def run(
        script: str,
        *args: str,
        timeout: float = 600,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> subprocess.CompletedProcess:
        run_env = dict(os.environ)
        run_env.setdefault('OMP_NUM_THREADS', '2')
        run_env['PYTHONPATH'] = os.pathsep.join(
            [str(REPO_ROOT), run_env.get('PYTHONPATH', '')]
        )
        if env:
            run_env.update(env)
        cmd = [*launcher, str(REPO_ROOT / script), *args]
        if not launcher:
            cmd = [sys.executable, *cmd]
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-6000:]
            pytest.fail(f'{script} exited with {proc.returncode}:\n{tail}')
        return proc

    return run
