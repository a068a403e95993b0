"""task modules registered in the OpenMMLab registries."""

from .yolov5_assigner import YOLOv5Assigner, YOLOv5LevelTargets
from .yolov5_bbox_coder import YOLOv5BBoxCoder
from .yolov5_ciou import bbox_ciou

__all__ = [
    'YOLOv5Assigner',
    'YOLOv5BBoxCoder',
    'YOLOv5LevelTargets',
    'bbox_ciou',
]
