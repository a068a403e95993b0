"""Quantizers registered in mmrazor's MODELS registry, and their helpers."""

from .quantized_conv import QuantConv2d
from .trace_free_quantizer import TraceFreeQuantizer
from .utils import (
    find_input_fake_quant,
    find_input_fake_quants,
    freeze_bn_stats,
    quantized_convs,
)

__all__ = [
    'QuantConv2d',
    'TraceFreeQuantizer',
    'find_input_fake_quant',
    'find_input_fake_quants',
    'freeze_bn_stats',
    'quantized_convs',
]
