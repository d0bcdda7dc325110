"""fxpress: a model-compression compiler for PyTorch.

    graph = fxpress.capture(model, (x,))                 # torch.export -> Graph
    graph = fxpress.optimize(graph, "fold-bn,dce")       # ordered passes
    module = fxpress.compile(graph, target="x86")        # TVM -> native code
    module.save("out/")                                   # artifact directory
    fxpress.load("out/")(x_numpy)                         # TVM runtime only

Attributes are imported lazily, so ``fxpress.load`` (the runtime) works in a
process that never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from fxpress.version import __version__ as __version__  # re-exported

_LAZY = {
    "capture": ("fxpress.ir.capture", "capture"),
    "Graph": ("fxpress.ir.graph", "Graph"),
    "optimize": ("fxpress.passes.manager", "optimize"),
    "PassManager": ("fxpress.passes.manager", "PassManager"),
    "compile": ("fxpress.api", "compile"),
    "load": ("fxpress.runtime.load", "load"),
    "CompiledModule": ("fxpress.runtime.module", "CompiledModule"),
    "passes": ("fxpress.passes", None),
    "errors": ("fxpress.errors", None),
    "FxpressError": ("fxpress.errors", "FxpressError"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fxpress' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
