"""Deployment: GABFusion fold and export of quantized detectors."""

from .fold_gabfusion import (  # noqa: F401
    FoldedNode,
    FoldResult,
    fold_gabfusion,
    stock_model_config,
)
from .onnx_export import (  # noqa: F401
    build_quantized_detector,
    export_detector_onnx,
)
