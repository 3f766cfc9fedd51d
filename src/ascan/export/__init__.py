"""Model export: ``ascan export`` (:mod:`ascan.export.cli`) writes ONNX through the dynamo exporter and checks
it in onnxruntime; :mod:`ascan.export.onnx` holds the export and the checks, :mod:`ascan.export.source` how a
model name, run folder or weights file becomes the model to export.

Importing this package does not import onnx, onnxruntime or onnxscript (the ``export`` extra): only an
export does.
"""

from ascan.export.onnx import ExportCheckError, ExportReport, ParityRow, export_mode, export_onnx
from ascan.export.options import ExportOptions

__all__ = ["ExportCheckError", "ExportOptions", "ExportReport", "ParityRow", "export_mode", "export_onnx"]
