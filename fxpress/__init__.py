"""fxpress: a model-compression compiler for PyTorch.

    graph = fxpress.capture(model, (x,))                 # torch.export -> Graph
    graph = fxpress.optimize(graph, "fold-bn,dce")       # ordered passes
    module = fxpress.compile(graph, target="x86")        # TVM -> native code
    module.save("out/")                                   # artifact directory
    fxpress.load("out/")(x_numpy)                         # TVM runtime only
    graph.save_pt2("model.pt2")                           # torch.export.load(...) after `import fxpress`
    fxpress.to_onnx(graph, "model.onnx")                  # ONNX (int8 as QDQ) for ONNX Runtime, OpenVINO

Attributes are imported lazily, so ``fxpress.load`` (the runtime) works in a
process that never imports torch. Where torch is installed, importing fxpress
registers fxpress's own torch.library operators (int8, block-sparse, layout,
fake-quantize), so that ``torch.export.load`` reads a program fxpress saved;
that imports torch (about 1.5 s), which artifact loading does anyway through
the TVM FFI. Without torch nothing is registered and nothing fails.
"""

from __future__ import annotations

import importlib
from typing import Any

from fxpress.version import __version__ as __version__  # re-exported

_LAZY = {
    "capture": ("fxpress.ir.capture", "capture"),
    "load_pt2": ("fxpress.ir.capture", "load_pt2"),
    "to_onnx": ("fxpress.export", "to_onnx"),
    "export": ("fxpress.export", None),
    "Graph": ("fxpress.ir.graph", "Graph"),
    "optimize": ("fxpress.passes.manager", "optimize"),
    "PassManager": ("fxpress.passes.manager", "PassManager"),
    "compile": ("fxpress.api", "compile"),
    "load": ("fxpress.runtime.load", "load"),
    "CompiledModule": ("fxpress.runtime.module", "CompiledModule"),
    "passes": ("fxpress.passes", None),
    "errors": ("fxpress.errors", None),
    "FxpressError": ("fxpress.errors", "FxpressError"),
    "auto": ("fxpress.auto", None),  # the package is callable: fxpress.auto(graph, ...) runs the search
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


def _register_torch_ops() -> None:
    """Import the modules that define fxpress's torch.library ops, when torch can be imported.

    Each module registers its ops on import; tests/test_pt2.py checks that
    every module of fxpress defining an ``fxpress::`` op is listed here.
    """
    try:
        import torch  # noqa: F401
    except ImportError:  # the runtime alone: artifacts run without torch
        return
    import fxpress.ir.layout_ops
    import fxpress.ir.ops
    import fxpress.ir.sparse_ops
    import fxpress.quant.fake_quant  # noqa: F401


_register_torch_ops()
