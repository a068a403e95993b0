"""Full mmengine checkpoints load on torch 2.x and local writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint

import gabfusion_mm  # noqa: F401
from gabfusion_mm.compat import atomic_write_bytes


def test_checkpoint_with_message_hub_loads(tmp_path: Path) -> None:
    checkpoint = {
        'state_dict': {'w': torch.arange(3.0)},
        'message_hub': {
            'log_scalars': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])}
        },
        'meta': {'seed': np.int64(7)},
    }
    path = tmp_path / 'epoch_1.pth'
    save_checkpoint(checkpoint, str(path))

    loaded = _load_checkpoint(str(path), map_location='cpu')

    torch.testing.assert_close(loaded['state_dict']['w'], torch.arange(3.0))
    buffer = loaded['message_hub']['log_scalars']['loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.current() == 2.0


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    missing = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _load_checkpoint(str(missing), map_location='cpu')


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / 'sub' / 'ckpt.pth'
    atomic_write_bytes(b'old', target)
    LocalBackend().put(b'new contents', target)

    assert target.read_bytes() == b'new contents'
    assert os.listdir(target.parent) == ['ckpt.pth']


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / 'ckpt.pth'
    atomic_write_bytes(b'old', target)

    class Unwritable:
        def __len__(self) -> int:
            return 1

    with pytest.raises(TypeError):
        atomic_write_bytes(Unwritable(), target)  # type: ignore[arg-type]

    assert target.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['ckpt.pth']
