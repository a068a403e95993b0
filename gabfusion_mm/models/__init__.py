"""Model components; importing this package registers them."""

from . import (  # noqa: F401
    algorithms,
    backbones,
    dense_heads,
    distillers,
    fake_quants,
    layers,
    losses,
    necks,
    quantizers,
    task_modules,
)
