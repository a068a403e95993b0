"""dense heads registered in the OpenMMLab registries."""

from .yolov5_head import YOLOv5Head

__all__ = ['YOLOv5Head']
