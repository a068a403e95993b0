"""losses registered in the OpenMMLab registries."""

from .ada_loss import ADALoss  # noqa: F401
