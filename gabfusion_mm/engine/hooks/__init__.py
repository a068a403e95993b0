"""Hooks registered in mmengine's HOOKS."""

from . import qat_distill_hooks  # noqa: F401
from .gab_fusion_hook import GABFusionHook  # noqa: F401
