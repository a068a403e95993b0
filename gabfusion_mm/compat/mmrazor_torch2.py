"""Make mmrazor 1.0.0 import and quantize correctly on torch 2.x.

mmrazor 1.0.0 was written against torch 1.13's ``torch.ao.quantization``.
On torch 2.x its imports fail inside a ``try`` block, so every quantization
name becomes a placeholder that raises "torch>=1.13 is not installed
properly". Five API changes cause this; each is bridged here:

1. ``fuser_method_mappings`` renamed ``reverse2``/``reverse3`` to
   ``_reverse2``/``_reverse3`` and removed ``reverse_sequential_wrapper2``.
2. ``torch.ao.quantization.backend_config.utils`` is read as an attribute but
   no longer imported by its package.
3. ``BackendPatternConfig`` lost the private setters
   ``_set_overwrite_output_fake_quantize``, ``_set_overwrite_output_observer``
   and ``_set_input_output_observed``.
4. torch 1.13 read a tuple pattern such as ``(bn, conv)`` last-op-first;
   torch 2 reads ``pattern`` first-op-first and keeps the old order only
   through ``_set_pattern_complex_format``. mmrazor's backend configs use the
   old order, so tuple patterns built by mmrazor are routed to the complex
   format. Without this no error is raised, but conv+BN is not fused and an
   activation is fused with the next block's convolution.
5. ``quantize_fx._fuse_fx`` renamed its ``graph_module`` argument to
   ``model``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

_APPLIED = False

_MMRAZOR_QUANT_MODULE = 'mmrazor.structures.quantization'


def _reverse_sequential_wrapper2(sequential: Callable) -> Callable:
    """Return a fuser method that passes its two modules swapped."""

    def fuser_method(is_qat: bool, first: Any, second: Any) -> Any:
        return sequential(second, first)

    return fuser_method


def _patch_fuser_method_mappings() -> None:
    from torch.ao.quantization import fuser_method_mappings as mappings

    if not hasattr(mappings, 'reverse2'):
        mappings.reverse2 = mappings._reverse2
    if not hasattr(mappings, 'reverse3'):
        mappings.reverse3 = mappings._reverse3
    if not hasattr(mappings, 'reverse_sequential_wrapper2'):
        mappings.reverse_sequential_wrapper2 = _reverse_sequential_wrapper2


def _patch_pattern_config_setters() -> None:
    from torch.ao.quantization.backend_config import BackendPatternConfig

    def _set_overwrite_output_fake_quantize(self, fake_quantize):
        self._overwrite_output_fake_quantize = fake_quantize
        return self

    def _set_overwrite_output_observer(self, observer):
        self._overwrite_output_observer = observer
        return self

    def _set_input_output_observed(self, input_output_observed):
        self._input_output_observed = input_output_observed
        return self

    setters = {
        '_set_overwrite_output_fake_quantize': (
            _set_overwrite_output_fake_quantize
        ),
        '_set_overwrite_output_observer': _set_overwrite_output_observer,
        '_set_input_output_observed': _set_input_output_observed,
    }
    for name, setter in setters.items():
        if not hasattr(BackendPatternConfig, name):
            setattr(BackendPatternConfig, name, setter)


def _patch_fuse_fx() -> None:
    from torch.ao.quantization import quantize_fx

    original = quantize_fx._fuse_fx
    if getattr(original, '_accepts_graph_module', False):
        return

    def _fuse_fx(*args: Any, **kwargs: Any) -> Any:
        if 'graph_module' in kwargs:
            kwargs['model'] = kwargs.pop('graph_module')
        return original(*args, **kwargs)

    _fuse_fx._accepts_graph_module = True
    quantize_fx._fuse_fx = _fuse_fx


def _legacy_order_pattern_config() -> type:
    """Build a BackendPatternConfig that reads tuples last-op-first."""
    from torch.ao.quantization.backend_config import BackendPatternConfig

    class LegacyOrderPatternConfig(BackendPatternConfig):
        """BackendPatternConfig that stores tuple patterns in the
        reversed nested format that torch 1.13 used for ``pattern``."""

        def __init__(self, pattern: Any = None) -> None:
            super().__init__(None)
            if pattern is not None:
                self.set_pattern(pattern)

        def set_pattern(self, pattern: Any) -> BackendPatternConfig:
            if isinstance(pattern, tuple):
                return self._set_pattern_complex_format(pattern)
            return super().set_pattern(pattern)

    return LegacyOrderPatternConfig


@contextlib.contextmanager
def _legacy_pattern_order() -> Iterator[None]:
    """Hand mmrazor the legacy-order pattern config while it imports.

    mmrazor binds ``BackendPatternConfig`` at import time, so its backend
    config builders keep the legacy-order class after the context exits.
    Other users of torch get the original class.
    """
    from torch.ao.quantization import backend_config

    original = backend_config.BackendPatternConfig
    backend_config.BackendPatternConfig = _legacy_order_pattern_config()
    try:
        yield
    finally:
        backend_config.BackendPatternConfig = original


def apply_mmrazor_torch2_bridge() -> None:
    """Patch torch 2.x so that mmrazor 1.0.0 quantization works.

    Must run before anything imports ``mmrazor.models``, ``mmrazor.engine``
    or ``mmrazor.structures``. Importing ``gabfusion_mm`` runs it.

    Raises:
        RuntimeError: if mmrazor's quantization structures were imported
            before the bridge, which leaves them as placeholders.
    """
    global _APPLIED
    if _APPLIED:
        return

    import torch

    if int(torch.__version__.split('.')[0]) < 2:
        _APPLIED = True
        return

    loaded = sys.modules.get(_MMRAZOR_QUANT_MODULE)
    if loaded is not None:
        raise RuntimeError(
            f'{_MMRAZOR_QUANT_MODULE} was imported before gabfusion_mm, so '
            'its torch.ao names are placeholders. Import gabfusion_mm first '
            "(configs: custom_imports=dict(imports=['gabfusion_mm']))."
        )

    importlib.import_module('torch.ao.quantization.backend_config.utils')
    _patch_fuser_method_mappings()
    _patch_pattern_config_setters()
    _patch_fuse_fx()
    with _legacy_pattern_order():
        importlib.import_module(_MMRAZOR_QUANT_MODULE)
    _APPLIED = True
