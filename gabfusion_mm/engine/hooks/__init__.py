"""Hooks registered in mmengine's HOOKS."""

from .gab_fusion_hook import GABFusionHook  # noqa: F401
