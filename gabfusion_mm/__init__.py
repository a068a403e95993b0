"""GABFusion and ADA for low-bit QAT of YOLO detectors in OpenMMLab."""

from .compat import (
    apply_mmengine_checkpoint_fixes,
    apply_mmrazor_torch2_bridge,
)

# The bridge must patch torch before anything imports mmrazor's
# quantization modules, so it runs before the model imports below.
apply_mmrazor_torch2_bridge()
apply_mmengine_checkpoint_fixes()

from .registry import register_all_modules  # noqa: E402
from .version import __version__  # noqa: E402

register_all_modules(init_default_scope=False)

__all__ = ['__version__', 'register_all_modules']
