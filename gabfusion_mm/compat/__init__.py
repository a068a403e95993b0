"""Compatibility layers that must run before the OpenMMLab packages load."""

from .mmrazor_torch2 import apply_mmrazor_torch2_bridge

__all__ = ['apply_mmrazor_torch2_bridge']
