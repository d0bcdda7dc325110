"""Lowering stage ``dead-code``: drop dataflow bindings nothing reads.

Rewrites leave their old bindings behind: the ``quantize`` converter that
takes a softmax into itself (te_softmax.py) leaves the softmax, ``add-norm``
leaves the add it fused. Unremoved, each would still be computed as a kernel
of its own. Only bindings inside dataflow blocks (pure by construction) go.
"""

from __future__ import annotations

import tvm
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="FxpressDeadBindings")
class DeadBindings:
    """Remove unused dataflow bindings from every Relax function."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                out.update_func(gv, relax.analysis.remove_all_unused(func))
        return out
