"""distillers registered in the OpenMMLab registries."""

from .ada_distiller import ADADistiller  # noqa: F401
