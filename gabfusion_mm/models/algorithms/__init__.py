"""algorithms registered in the OpenMMLab registries."""

from .detector_qat import DetectorQAT  # noqa: F401
from .qat_distill import QATDistill  # noqa: F401
