"""Serve a model folder with onnxruntime, numpy and Pillow only (no torch, no fastai)."""
