"""Deployment: GABFusion fold and export of quantized detectors."""

from .onnx_export import (  # noqa: F401
    build_quantized_detector,
    export_detector_onnx,
)
