"""backbones registered in the OpenMMLab registries."""

from .yolov5_csp_darknet import SPPFBottleneck, YOLOv5CSPDarknet

__all__ = ['SPPFBottleneck', 'YOLOv5CSPDarknet']
