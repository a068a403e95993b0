"""Deployment: GABFusion fold and export of quantized detectors."""

from .fold_gabfusion import FoldedNode, FoldResult, fold_gabfusion  # noqa: F401
from .fold_qat import QuantFoldResult, fold_quantized_gabfusion  # noqa: F401
from .onnx_export import (  # noqa: F401
    build_quantized_detector,
    export_detector_onnx,
)
from .stock_config import stock_model_config  # noqa: F401
