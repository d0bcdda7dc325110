"""fold-qdq's clean-up rules: where the quantize / dequantize pairs folding leaves behind go next.

Folding (`fxpress.passes.fold_qdq`) puts a quantize before and a dequantize
after every integer op it makes. These rules then let int8 flow from op to op,
each a rule of the greedy driver (`fxpress.ir.rewrite`) on one node:

    hoist      q(S(t), s, z) -> S(q(t, s, z))      # S only moves or maxes values (max-pool, view, permute, ...)
    cancel     q(dq(t, s, z), s, z) -> t           # back-to-back boundaries with equal params and full int8 range
    dedupe     q(x, s, z) twice -> once            # Q, K and V share one quantized input
    float-out  dq(quantized_matmul(a, b)) -> quantized_matmul_float(a, b)   # only float ops read it (Q·Kᵀ)
               dq(quantized_linear(x, ..)) -> quantized_linear_float(x, ..) # likewise (FFN up, attention output)
               dq(quantized_conv2d(x, ..)) -> quantized_conv2d_float(x, ..) # likewise (a ReLU, a residual add)

`clean_up` runs them in three phases, each to its fixed point: hoist; then
cancel and dedupe; then float-out. The order is part of the rules: a quantize
hoisted through a max-pool reaches the dequantize above it and cancels
(``q(dq(y))`` became ``pool(q(dq(y)))``), and only once no quantize reads a
product's dequantize is it known that float ops alone read it.

float-out needs each product's accumulator scale (``x_scale * w_scale``, per
output row for a linear or conv; ``a_scale * b_scale`` for a matmul), which
folding knew and the graph no longer holds: folding hands them over in a dict
keyed by the integer op's node, so nothing transient is left on the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
import torch.fx

from fxpress.ir.annotations import META_KEY
from fxpress.ir.graph import Graph
from fxpress.ir.rewrite import Rule, rewrite
from fxpress.quant.opsets import SHARED_PARAMS

fx_ops = torch.ops.fxpress
RULES = ("hoist", "cancel", "dedupe", "float-out")  # every clean-up rule, in the order `clean_up` runs them
_PRODUCTS = {fx_ops.quantized_matmul.default, fx_ops.quantized_linear.default, fx_ops.quantized_conv2d.default}


def takes_place_of(new: torch.fx.Node, old: torch.fx.Node) -> None:
    """`new` gets `old`'s output facts (annotations, source line, shape) before it replaces it."""
    new.meta[META_KEY] = dict(old.meta.get(META_KEY) or {})
    new.meta["stack_trace"] = old.meta.get("stack_trace")
    if "val" in old.meta:  # later folds in the same run read their operands' shapes
        new.meta["val"] = old.meta["val"]


def clean_up(graph: Graph, acc_scales: dict[torch.fx.Node, Any], rules: Iterable[str] = RULES) -> int:
    """Run the named clean-up rules (all by default) on `graph` in their phases; how many rewrites."""
    enabled = set(rules)
    phases: list[list[Rule]] = [
        [hoist_quantize] if "hoist" in enabled else [],
        [r for name, r in (("cancel", cancel_pair), ("dedupe", dedupe_quantize)) if name in enabled],
        [float_output(graph, acc_scales)] if "float-out" in enabled else [],
    ]
    return sum(rewrite(graph.fx, phase) for phase in phases if phase)


def _is_quantize(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target == fx_ops.quantize.default


def _operand(node: torch.fx.Node, index: int = 0) -> torch.fx.Node | None:
    """`node`'s argument `index` if it is a node (a value computed in the graph)."""
    arg = node.args[index] if len(node.args) > index else None
    return arg if isinstance(arg, torch.fx.Node) else None


def _is_shared(node: torch.fx.Node) -> bool:
    """A float op taking its outputs from its first argument's values (observe's shared-parameter ops)."""
    return (
        node.target in SHARED_PARAMS
        and _operand(node) is not None
        and not any(isinstance(a, torch.fx.Node) for a in [*node.args[1:], *node.kwargs.values()])
    )


def hoist_quantize(q: torch.fx.Node) -> torch.fx.Node | None:
    """``q(S(t)) -> S(q(t))`` for ops S whose outputs are some of their input's values (max-pool, reshapes).

    Exact for the quantize's users: quantize is monotone and elementwise, so it
    commutes with taking, moving and maxing values (a max-pool window always
    holds a real value, so the int8 padding never wins). Other float users of
    S read ``dequantize(S(q(t)))``: S shares its input's parameters (observe),
    so that is the value the observed model gives them. The int8 value then
    flows from the op that made it: ``q(dq(t))`` cancels and the int8 tensor is
    what gets pooled or permuted.
    """
    shared = _operand(q) if _is_quantize(q) else None
    if shared is None or not _is_shared(shared):
        return None
    graph, qargs, op = q.graph, q.args[1:], cast(Callable[..., Any], shared.target)
    with graph.inserting_before(shared):
        inner = graph.call_function(fx_ops.quantize.default, (shared.args[0], *qargs))
        moved = graph.call_function(op, (inner, *shared.args[1:]), dict(shared.kwargs))
        floats = [u for u in shared.users if u is not q]
        if floats:
            back = graph.call_function(fx_ops.dequantize.default, (moved, *qargs[:2]))
            for user in floats:
                user.replace_input_with(shared, back)
    return moved


def cancel_pair(q: torch.fx.Node) -> torch.fx.Node | None:
    """``q(dq(t, s, z), s, z) -> t``: the same scale and zero point, and the full int8 range."""
    src = _operand(q) if _is_quantize(q) else None
    cancels = (
        src is not None
        and src.target == fx_ops.dequantize.default
        and tuple(src.args[1:]) == tuple(q.args[1:3])
        and tuple(q.args[3:]) == (-128, 127)
    )
    return _operand(src) if src is not None and cancels else None


def dedupe_quantize(q: torch.fx.Node) -> torch.fx.Node | None:
    """The same input quantized twice with the same parameters -> the first quantize, read by both."""
    src = _operand(q) if _is_quantize(q) else None
    if src is None:
        return None
    params = tuple(q.args[1:])
    same = [u for u in src.users if u < q and _is_quantize(u) and u.args[0] is src and tuple(u.args[1:]) == params]
    return min(same) if same else None


def float_output(graph: Graph, acc_scales: dict[torch.fx.Node, Any]) -> Rule:
    """The float-out rule for the products folding made, whose accumulator scales `acc_scales` holds.

    ``dq(quantized_matmul | _linear | _conv2d)`` read only by float ops ->
    their ``_float`` forms. Requantizing a product to its calibrated int8 grid
    only to dequantize it again costs a rounding (and the epilogue's time) for
    nothing when no integer op reads it: attention's Q·Kᵀ (read by the
    softmax), a transformer's FFN up-projection (GELU) and attention output
    (residual add), a conv read by a float ReLU or a residual add.
    """

    def float_out(dq: torch.fx.Node) -> torch.fx.Node | None:
        if dq.op != "call_function" or dq.target != fx_ops.dequantize.default:
            return None
        yq = _operand(dq)
        if not (yq is not None and yq.target in _PRODUCTS and len(yq.users) == 1):
            return None
        if any(u.target == fx_ops.quantize.default for u in dq.users) or yq not in acc_scales:
            return None
        scale = acc_scales[yq]
        with graph.fx.inserting_before(dq):
            if yq.target == fx_ops.quantized_matmul.default:
                y = graph.fx.call_function(fx_ops.quantized_matmul_float.default, (*yq.args[:4], scale))
            else:
                x, zx, w, b = yq.args[:4]
                weight = _operand(yq, 2)
                assert weight is not None  # folding made it a parameter: ``<layer>_weight_i8``
                hint = str(weight.target).removesuffix("_weight_i8")
                scale_node = graph.add_param(f"{hint}.out_scale", scale, before=dq)
                if yq.target == fx_ops.quantized_linear.default:
                    y = graph.fx.call_function(fx_ops.quantized_linear_float.default, (x, zx, w, b, scale_node))
                else:  # a conv: its attributes follow the output zero point
                    args = (x, zx, w, b, scale_node, *yq.args[7:])
                    y = graph.fx.call_function(fx_ops.quantized_conv2d_float.default, args)
        takes_place_of(y, dq)
        return y

    return float_out
