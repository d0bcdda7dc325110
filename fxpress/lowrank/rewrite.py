"""Apply a low-rank plan to a graph: each planned op becomes its chain of factor ops.

    %y = aten.linear(%x, %fc.weight, %fc.bias)
      -> %h = aten.linear(%x, %fc_weight_lr1)            # [r, in]
         %y = aten.linear(%h, %fc_weight_lr2, %fc.bias)  # [out, r]

Factor weights are new frozen parameters (`Graph.add_param`, named after the
weight they replace with ``_lr1``, ``_lr2``, ...), each marked `LowRankFactor`;
the original bias node feeds the last stage; the new ops take the replaced
op's module path and stack trace (so regexes on module paths, the printer's
source lines and later passes still name the layer). The replaced weights, and
any annotation on them (a `Sparsity`), go with `Graph.drop_unused_params`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from fxpress.ir import annotations as notes
from fxpress.ir.opsets import bind
from fxpress.lowrank.annotations import LowRankFactor
from fxpress.lowrank.plan import LayerPlan

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

aten = torch.ops.aten
_KEPT_META = ("nn_module_stack", "stack_trace", "source_fn_stack")


def apply_plan(graph: Graph, plan: Sequence[LayerPlan]) -> int:
    """Replace every factorized layer of `plan` in `graph` (in place); returns how many were replaced."""
    ops = {n.name: n for n in graph.nodes("call_function")}
    done = 0
    for row in plan:
        if not row.factorized or row.factorization is None:
            continue
        op = ops[row.op]
        bias = bind(op.target, op.args, op.kwargs).get("bias")
        value: Any = op.args[0]
        stages = row.factorization.stages
        for k, stage in enumerate(stages, 1):
            w = graph.add_param(f"{row.weight}_lr{k}", stage.weight, before=op)
            notes.annotate(w, LowRankFactor(row.layer, row.factorization.method, k, len(stages), row.rank))
            b = bias if stage.bias else None
            with graph.fx.inserting_before(op):
                if stage.geometry is None:  # x @ W_k^T (+ b)
                    value = graph.fx.call_function(aten.linear.default, (value, w) if b is None else (value, w, b))
                else:  # conv2d(x, W_k, b, stride, padding, dilation, groups=1)
                    g = stage.geometry
                    args = (value, w, b, list(g.stride), list(g.padding), list(g.dilation), 1)
                    value = graph.fx.call_function(aten.conv2d.default, args)
            value.meta.update({key: op.meta[key] for key in _KEPT_META if key in op.meta})
        op.replace_all_uses_with(value)
        graph.fx.erase_node(op)
        done += 1
    if done:
        graph.drop_unused_params()
    return done
