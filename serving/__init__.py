"""Serve a model folder with onnxruntime, numpy and Pillow only (no torch, no fastai)."""
import os

# onnxruntime 1.32 sends usage events to Microsoft from Linux too (a CONNECT to mobile.events.data.microsoft.com a few
# seconds after start-up, seen through a test proxy) and keeps a database of them under ~/.cache/Microsoft. A public
# demo sends nothing about its use anywhere. Its own switch, disable_telemetry_events(), comes too late: the events
# start when onnxruntime is imported. This variable, read then, stops them; set here, before any serving module imports
# onnxruntime (the training stages reach it through serving too).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
