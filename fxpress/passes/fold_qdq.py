"""fold-qdq: turn calibrated float linears into int8 kernels with Q/DQ at the edges.

    %y = aten.linear(%x, %w, %b)        # x, w, y carry QuantParams
      -> %xq = fxpress.quantize(%x, sx, zx, -128, 127)
         %yq = fxpress.quantized_linear(%xq, zx, %w_i8, %b_i32, %mult, %shift, zy)
         %y  = fxpress.dequantize(%yq, sy, zy)
    q(dq(t, s, z), s, z) -> t           # back-to-back boundaries with equal params cancel
    two equal quantize(%x, ...)  -> one  # Q, K and V share one quantized input

Weights are quantized once here and stored as int8 parameters (the float
weight is dropped); the bias becomes int32 at scale ``sx * sw``; the
requantization multiplier ``sx * sw[n] / sy`` becomes a Q31 multiplier and a
shift (`fxpress.ir.ops.requantize_params`). uint8 activation parameters are
re-expressed as int8 (zero point - 128: the same real values).

Requires: ``calibrated``. Establishes: ``quantized``. Numerics: the int8
result equals the integer reference bit for bit (eager and TVM); against fake
quantization in float it differs by at most one output step (rounding of the
int32 bias and of the fixed-point multiplier). Leaves alone: (reported in
``stats["float"]`` with the reason) linears whose input, weight or output has
no parameters, per-channel activations, weights with a non-zero zero point,
multipliers outside the fixed-point range. Conv, matmul and add are not
folded yet: they stay float (correct, not faster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from fxpress.ir import ops
from fxpress.ir.annotations import META_KEY, get
from fxpress.ir.graph import Graph
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.quant.annotations import QuantParams

aten = torch.ops.aten
fx_ops = torch.ops.fxpress


def _int8_view(p: QuantParams) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of per-tensor params, expressed in int8."""
    qmin, qmax = p.scheme.qrange
    shift = 128 if qmin >= 0 else 0  # uint8 -> int8: same real values
    return float(p.scale.item()), int(p.zero_point.item()) - shift, qmin - shift, qmax - shift


def _why_not(x: Any, w: Any, node: torch.fx.Node) -> str | None:
    px, pw, py = (get(n, "qparams") if isinstance(n, torch.fx.Node) else None for n in (x, w, node))
    if px is None or pw is None or py is None:
        return "input, weight or output has no quantization parameters"
    if px.axis is not None or py.axis is not None:
        return "per-channel activation parameters"
    if bool((pw.zero_point != 0).any()):
        return "weight zero point is not 0 (integer kernels need symmetric weights)"
    if pw.axis not in (None, 0):
        return f"weight quantized along axis {pw.axis}, not the output channels"
    return None


def _cancels(src: Any, q: torch.fx.Node) -> bool:
    """`q` re-quantizes a dequantize with the same scale, zero point and full int8 range."""
    return (
        isinstance(src, torch.fx.Node)
        and src.target == fx_ops.dequantize.default
        and tuple(src.args[1:]) == tuple(q.args[1:3])
        and tuple(q.args[3:]) == (-128, 127)
    )


@dataclass(frozen=True)
class FoldQDQ(Pass):
    """Fold calibrated linears into int8 `quantized_linear` (see module doc)."""

    name = "fold-qdq"
    requires = frozenset({"calibrated"})
    establishes = frozenset({"quantized"})

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        folded, left = 0, {}
        for node in [n for n in graph.nodes("call_function") if n.target == aten.linear.default]:
            x, w, b = (*node.args, None)[:3]
            reason = (
                _why_not(x, w, node)
                if isinstance(w, torch.fx.Node) and w.op == "get_attr"
                else "weight is not a parameter"
            )
            if reason is None:
                reason = self._fold(graph, node, x, w, b)
            if reason is None:
                folded += 1
            else:
                left[node.name] = reason
        cancelled = self._cleanup(graph)
        if folded:
            graph.drop_unused_params()
        return PassResult(graph, modified=folded > 0 or cancelled > 0, stats={"folded": folded, "float": left})

    def _fold(self, graph: Graph, node: torch.fx.Node, x: torch.fx.Node, w: torch.fx.Node, b: Any) -> str | None:
        px, pw, py = get(x, "qparams"), get(w, "qparams"), get(node, "qparams")
        sx, zx, qmin, qmax = _int8_view(px)
        sy, zy, _, _ = _int8_view(py)
        weight = graph.param(w).double()
        sw = pw.scale.double().reshape(-1)
        sw_rows = sw.expand(weight.shape[0]) if sw.numel() == 1 else sw
        real = sx * sw_rows / sy
        if bool(((real < 2.0**-32) | (real >= 2.0**30)).any()):
            return "requantization multiplier outside the fixed-point range"
        mult, shift = ops.requantize_params(real)
        wq = torch.round(weight / sw_rows[:, None]).clamp(-128, 127).to(torch.int8)
        bias = (
            graph.param(b).double()
            if isinstance(b, torch.fx.Node)
            else torch.zeros(weight.shape[0], dtype=torch.float64)
        )
        bq = torch.round(bias / (sx * sw_rows)).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        hint = str(w.target).removesuffix(".weight")
        params = [
            graph.add_param(f"{hint}.{k}", v, before=node)
            for k, v in (("weight_i8", wq), ("bias_i32", bq), ("requant_mult", mult), ("requant_shift", shift))
        ]
        with graph.fx.inserting_before(node):
            xq = graph.fx.call_function(fx_ops.quantize.default, (x, sx, zx, qmin, qmax))
            yq = graph.fx.call_function(fx_ops.quantized_linear.default, (xq, zx, *params, zy))
            y = graph.fx.call_function(fx_ops.dequantize.default, (yq, sy, zy))
        y.meta[META_KEY] = dict(node.meta.get(META_KEY) or {})  # y carries the linear's output facts
        y.meta["stack_trace"] = node.meta.get("stack_trace")
        node.replace_all_uses_with(y)
        graph.fx.erase_node(node)
        return None

    @staticmethod
    def _cleanup(graph: Graph) -> int:
        changed = 0
        seen: dict[tuple[Any, ...], torch.fx.Node] = {}
        for node in list(graph.nodes("call_function")):
            if node.target != fx_ops.quantize.default:
                continue
            src = node.args[0]
            if _cancels(src, node):  # q(dq(t, s, z), s, z) -> t
                node.replace_all_uses_with(src.args[0])
                graph.fx.erase_node(node)
                if not src.users:
                    graph.fx.erase_node(src)
                changed += 1
                continue
            key = (src, *node.args[1:])
            if key in seen:  # the same input quantized twice -> once
                node.replace_all_uses_with(seen[key])
                graph.fx.erase_node(node)
                changed += 1
            else:
                seen[key] = node
        return changed
