"""Serving a model version: ONNX Runtime and numpy, no torch (stream/serving/version.py)."""
