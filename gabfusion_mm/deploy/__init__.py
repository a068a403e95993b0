"""Deployment: GABFusion fold and export of quantized detectors."""
