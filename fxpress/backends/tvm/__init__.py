"""The TVM backend: lowering, targets, schedule rules and compiled modules."""

from fxpress.backends.tvm.fast_script import install as _install_fast_script

_install_fast_script()  # before the kernel modules below define their prim_funcs (fast_script.py says why)

from fxpress.backends.tvm.compile import compile_graph  # noqa: E402
from fxpress.backends.tvm.targets import TARGETS, resolve_target  # noqa: E402

__all__ = ["TARGETS", "compile_graph", "resolve_target"]
