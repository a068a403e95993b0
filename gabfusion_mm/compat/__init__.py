"""Compatibility layers that must run before the OpenMMLab packages load."""

from .mmengine_checkpoint import (
    apply_mmengine_checkpoint_fixes,
    atomic_write_bytes,
    load_local_checkpoint,
)
from .mmrazor_torch2 import apply_mmrazor_torch2_bridge

__all__ = [
    'apply_mmengine_checkpoint_fixes',
    'apply_mmrazor_torch2_bridge',
    'atomic_write_bytes',
    'load_local_checkpoint',
]
