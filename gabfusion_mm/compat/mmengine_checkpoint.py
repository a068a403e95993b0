"""Checkpoint loading and saving fixes for mmengine 0.10.7 on torch 2.x.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which
rejects mmengine checkpoints: they pickle the message hub
(``HistoryBuffer``), numpy values and the config. mmengine 0.10.7 calls
``torch.load`` without the argument, so ``load_from`` and ``--resume`` fail.
The local-file scheme is re-registered to load full checkpoints.

mmengine also writes a checkpoint straight to its final path, so a run killed
while saving leaves a truncated file. Local writes are made atomic: the bytes
go to a temporary file in the same folder, which then replaces the target.
"""

from __future__ import annotations

import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Any

import torch

_APPLIED = False


def load_local_checkpoint(filename: str, map_location: Any = None) -> Any:
    """Load a full mmengine checkpoint from a local file.

    Checkpoints are pickles that can run code when loaded; load only files
    you trust, as with any ``torch.load(weights_only=False)``.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} not found')
    return torch.load(filename, map_location=map_location, weights_only=False)


def atomic_write_bytes(obj: bytes, filepath: str | Path) -> None:
    """Write ``obj`` to ``filepath`` so readers see the old or new file."""
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        dir=folder, prefix='.' + osp.basename(filepath), suffix='.tmp'
    )
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(obj)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, filepath)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise


def apply_mmengine_checkpoint_fixes() -> None:
    """Register the full-checkpoint loader and atomic local writes."""
    global _APPLIED
    if _APPLIED:
        return

    from mmengine.fileio.backends.local_backend import LocalBackend
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(
        prefixes='', loader=load_local_checkpoint, force=True
    )

    def put(self: LocalBackend, obj: bytes, filepath: str | Path) -> None:
        atomic_write_bytes(obj, filepath)

    LocalBackend.put = put
    _APPLIED = True
