"""Low-bit fake quantizers registered in mmrazor's MODELS registry."""

from .base import LowBitFakeQuantize
from .dorefa import DoReFaWeightFakeQuantize
from .lsq import LSQFakeQuantize, LSQPlusFakeQuantize
from .n2uq import N2UQFakeQuantize, N2UQWeightFakeQuantize
from .pact import PACTFakeQuantize

__all__ = [
    'DoReFaWeightFakeQuantize',
    'LSQFakeQuantize',
    'LSQPlusFakeQuantize',
    'LowBitFakeQuantize',
    'N2UQFakeQuantize',
    'N2UQWeightFakeQuantize',
    'PACTFakeQuantize',
]
