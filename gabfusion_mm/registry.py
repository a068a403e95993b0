"""Registration of every gabfusion_mm component into OpenMMLab registries."""

from __future__ import annotations

import importlib

# Modules whose import registers components. Each entry is imported when it
# exists, so parts of the package can be added independently.
_COMPONENT_MODULES = (
    'gabfusion_mm.models',
    'gabfusion_mm.engine',
    'gabfusion_mm.deploy',
)


def register_all_modules(init_default_scope: bool = True) -> None:
    """Register mmdet, mmrazor and gabfusion_mm components.

    Args:
        init_default_scope (bool): Whether to set ``mmdet`` as the default
            registry scope, as ``mmdet.utils.register_all_modules`` does.
            Defaults to True.
    """
    import mmrazor.engine  # noqa: F401
    import mmrazor.models  # noqa: F401
    from mmdet.utils import register_all_modules as register_mmdet

    register_mmdet(init_default_scope=init_default_scope)
    for name in _COMPONENT_MODULES:
        importlib.import_module(name)
