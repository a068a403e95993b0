"""Staged experiment runner behind ``tools/run_demo.py``."""

from .stages import Stage, StageRunner, read_test_metrics

__all__ = ['Stage', 'StageRunner', 'read_test_metrics']
