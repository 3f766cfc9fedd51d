"""Model export: ``ascan export`` (:mod:`ascan.export.cli`) writes ONNX through the dynamo exporter and checks
it in onnxruntime (:mod:`ascan.export.onnx`), or OpenVINO IR checked compiled on the CPU
(:mod:`ascan.export.openvino`); :mod:`ascan.export.checks` holds the checks both share (a runtime against eager
PyTorch, the report), :mod:`ascan.export.source` how a model name, run folder or weights file becomes the model
to export.

Importing this package does not import onnx, onnxruntime, onnxscript (the ``export`` extra) or openvino (the
``deploy`` extra): only an export does.
"""

import importlib
from typing import Any

from ascan.export.options import ExportOptions

_FROM_ONNX = ("ExportCheckError", "ExportReport", "ParityRow", "export_mode", "export_onnx")


def __getattr__(name: str) -> Any:
    """The exporter's names, imported on first use (it imports torch: ``--help`` of an export verb does not)."""
    if name in _FROM_ONNX:
        return getattr(importlib.import_module("ascan.export.onnx"), name)
    raise AttributeError(f"module 'ascan.export' has no attribute {name!r}")


__all__ = ["ExportCheckError", "ExportOptions", "ExportReport", "ParityRow", "export_mode", "export_onnx"]
