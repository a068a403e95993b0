"""Engine components (hooks); importing this package registers them."""

from . import hooks  # noqa: F401
