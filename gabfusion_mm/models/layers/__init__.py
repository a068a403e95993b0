"""Layers registered in the OpenMMLab registries."""

from .channel_affine_fit import AffineFitResult, ChannelAffineFit
from .channel_layer_norm import ChannelLayerNorm
from .fusion_builder import FUSION_MODES, NORM_INITS, build_fusion
from .gab_fusion import GABFusion

__all__ = [
    'FUSION_MODES',
    'NORM_INITS',
    'AffineFitResult',
    'ChannelAffineFit',
    'ChannelLayerNorm',
    'GABFusion',
    'build_fusion',
]
