"""The TVM backend: lowering, targets, schedule rules and compiled modules."""

from fxpress.backends.tvm.compile import compile_graph
from fxpress.backends.tvm.targets import TARGETS, resolve_target

__all__ = ["TARGETS", "compile_graph", "resolve_target"]
