"""necks registered in the OpenMMLab registries."""

from .gab_cspnext_pafpn import GABCSPNeXtPAFPN  # noqa: F401
from .gab_yolov3_neck import GABYOLOV3Neck  # noqa: F401
from .gab_yolox_pafpn import GABYOLOXPAFPN  # noqa: F401
from .yolov5_pafpn import YOLOv5PAFPN  # noqa: F401
