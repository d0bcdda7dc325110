"""Writing fxpress graphs in formats other runtimes read: ONNX (`to_onnx`).

A compressed graph leaves fxpress in three ways: a TVM artifact
(`fxpress.compile`), a torch.export program (`Graph.save_pt2`, which PyTorch
loads once ``import fxpress`` has registered fxpress's ops), and a standard
ONNX model (`to_onnx`), int8 layers in QDQ form, for ONNX Runtime, OpenVINO
and any other ONNX consumer. This package sits beside the backends: it reads
graphs and the IR's ops, and nothing below it imports it.
"""

from fxpress.export.onnx import OnnxExport, to_onnx

__all__ = ["OnnxExport", "to_onnx"]
