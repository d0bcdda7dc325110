"""fold-qdq: turn calibrated float linears and convolutions into int8 kernels with Q/DQ at the edges.

    %y = aten.linear(%x, %w, %b)        # x, w, y carry QuantParams
      -> %xq = fxpress.quantize(%x, sx, zx, -128, 127)
         %yq = fxpress.quantized_linear(%xq, zx, %w_i8, %b_i32, %mult, %shift, zy)
         %y  = fxpress.dequantize(%yq, sy, zy)
    %y = aten.conv2d(%x, %w, %b, stride, padding, dilation, groups)
      -> the same with fxpress.quantized_conv2d(%xq, zx, ..., zy, stride, [t, l, b, r], dilation, groups)
    %y = aten.matmul(%a, %b)            # two activations: attention's Q·Kᵀ and P·V (also aten.bmm)
      -> fxpress.quantized_matmul(quantize(%a), za, quantize(%b), zb, mult, shift, zy), dequantized
    %y = aten.linear(%x, %w, %b)        # marked dynamic by observe{dynamic=[..]}: weight params only
      -> %y = fxpress.dynamic_quantized_linear(%x, %w_i8, %w_scale, %b_f32)   # per-row uint8 at run time
    q(S(t), s, z) -> S(q(t, s, z))      # S only moves or maxes values (max-pool, view, permute, ...)
    q(dq(t, s, z), s, z) -> t           # back-to-back boundaries with equal params cancel
    dq(quantized_matmul(a, b)) -> quantized_matmul_float(a, b)   # when only float ops read it (Q·Kᵀ)
    dq(quantized_linear(x, ..)) -> quantized_linear_float(x, ..)  # likewise (FFN up, attention output)
    dq(quantized_conv2d(x, ..)) -> quantized_conv2d_float(x, ..)  # likewise (a ReLU, a residual add)
    two equal quantize(%x, ...)  -> one  # Q, K and V share one quantized input

Convolutions are NCHW 2-D ones (``aten.conv2d``, its ``padding="same"``
form, or a non-transposed ``aten.convolution``): regular, depthwise and
grouped, any stride, padding and dilation. Weights are quantized once here and
stored as int8 parameters (the float weight is dropped); the bias becomes
int32 at scale ``sx * sw``; the requantization multiplier ``sx * sw[o] / sy``
becomes a Q31 multiplier and a shift (`fxpress.ir.ops.requantize_params`).
uint8 activation parameters are re-expressed as int8 (zero point - 128: the
same real values). A ReLU after the op stays a float op between a dequantize
and a quantize with its own parameters (the integer kernels have no fused
clamp yet).

Requires: ``calibrated``. Establishes: ``quantized``. Numerics: the int8
result equals the integer reference bit for bit (eager and TVM); against fake
quantization in float it differs by at most one output step (rounding of the
int32 bias and of the fixed-point multiplier). Leaves alone: (reported in
``stats["float"]`` with the reason) ops whose input, weight or output has
no parameters, per-channel activations, weights with a non-zero zero point,
multipliers outside the fixed-point range, transposed and non-2-D
convolutions, matmuls with a constant operand (a linear is the integer form of
those) or a 1-D operand. Add and cat are not folded yet: they stay float
(correct, not faster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from fxpress.ir import ops
from fxpress.ir.annotations import META_KEY, get
from fxpress.ir.graph import Graph
from fxpress.ir.opsets import CONV, CONV_TRANSPOSE, bind, is_transposed_conv, packet
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.quant.annotations import QuantParams
from fxpress.quant.opsets import SHARED_PARAMS

aten = torch.ops.aten
fx_ops = torch.ops.fxpress
_MATMUL = {aten.matmul.default, aten.bmm.default}  # the products quantized_matmul takes (observe's roots)


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


def _why_not_matmul(node: torch.fx.Node) -> str | None:
    a, b = node.args[:2]
    if not all(isinstance(t, torch.fx.Node) and t.op != "get_attr" for t in (a, b)):
        return "an operand is a constant (use a linear for constant weights)"
    if a.meta["val"].dim() < 2 or b.meta["val"].dim() < 2:
        return "a 1-D operand"
    params = [get(t, "qparams") for t in (a, b, node)]
    if any(p is None for p in params):
        return "an operand or the output has no quantization parameters"
    if any(p.axis is not None for p in params):
        return "per-channel activation parameters"
    return None


def _cancels(src: Any, q: torch.fx.Node) -> bool:
    """`q` re-quantizes a dequantize with the same scale, zero point and full int8 range."""
    return (
        isinstance(src, torch.fx.Node)
        and src.target == fx_ops.dequantize.default
        and tuple(src.args[1:]) == tuple(q.args[1:3])
        and tuple(q.args[3:]) == (-128, 127)
    )


def _pair(v: Any) -> list[int]:
    return [int(i) for i in v] * (2 if len(v) == 1 else 1)


def _conv_attrs(node: torch.fx.Node, args: dict[str, Any]) -> tuple[Any, ...] | str:
    """(stride, [top, left, bottom, right], dilation, groups) of a conv, or why it has no integer kernel."""
    if is_transposed_conv(node):
        return "transposed convolution: no integer kernel"
    x, w = args["input"], args["weight"]
    if not all(isinstance(t, torch.fx.Node) and t.meta["val"].dim() == 4 for t in (x, w)):
        return "not a batched 2-D convolution"
    stride, dilation, padding = _pair(args["stride"]), _pair(args["dilation"]), args["padding"]
    if padding == "same":  # torch pads the extra row / column at the bottom / right
        totals = [d * (k - 1) for d, k in zip(dilation, w.meta["val"].shape[2:], strict=True)]
        pads = [totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2]
    else:
        pair = [0, 0] if padding == "valid" else _pair(padding)
        pads = pair + pair
    return stride, pads, dilation, int(args["groups"])


def _quantize_weight(weight: torch.Tensor, row_scales: torch.Tensor, pw: QuantParams) -> torch.Tensor:
    """int8 weights: ``round(w / scale[o])`` clamped to the scheme's range ([-128, 127], [-64, 63] reduced)."""
    wmin, wmax = pw.scheme.qrange
    scales = row_scales.reshape(-1, *[1] * (weight.dim() - 1))
    return torch.round(weight / scales).clamp(wmin, wmax).to(torch.int8)


def _replace(graph: Graph, node: torch.fx.Node, y: torch.fx.Node) -> None:
    """`y` (the dequantized integer result) takes `node`'s place, its output facts and source line."""
    y.meta[META_KEY] = dict(node.meta.get(META_KEY) or {})
    y.meta["stack_trace"] = node.meta.get("stack_trace")
    if "val" in node.meta:  # later folds in the same run read their operands' shapes
        y.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(y)
    graph.fx.erase_node(node)


def _hoist_quantizes(graph: Graph) -> int:
    """``q(S(t)) -> S(q(t))`` for ops S whose outputs are some of their input's values (max-pool, reshapes).

    Exact for the quantize's users: quantize is monotone and elementwise, so it
    commutes with taking, moving and maxing values (a max-pool window always
    holds a real value, so the int8 padding never wins). Other float users of
    S read ``dequantize(S(q(t)))``: S shares its input's parameters (observe),
    so that is the value the observed model gives them. The int8 value then
    flows from the op that made it: ``q(dq(t))`` cancels and the int8 tensor is
    what gets pooled or permuted.
    """
    hoisted = 0
    for q in list(graph.nodes("call_function")):
        if q.target != fx_ops.quantize.default:
            continue
        while _is_shared(q.args[0]):
            shared, qargs = q.args[0], q.args[1:]
            with graph.fx.inserting_before(shared):
                inner = graph.fx.call_function(fx_ops.quantize.default, (shared.args[0], *qargs))
                moved = graph.fx.call_function(shared.target, (inner, *shared.args[1:]), dict(shared.kwargs))
                floats = [u for u in shared.users if u is not q]
                if floats:
                    back = graph.fx.call_function(fx_ops.dequantize.default, (moved, *qargs[:2]))
                    for user in floats:
                        user.replace_input_with(shared, back)
            q.replace_all_uses_with(moved)
            graph.fx.erase_node(q)
            graph.fx.erase_node(shared)
            q, hoisted = inner, hoisted + 1
    return hoisted


_ACC_SCALE = "fxpress_acc_scale"  # transient node meta: x_scale * w_scale (linear, per row) or a_scale * b_scale


def _float_products(graph: Graph) -> int:
    """``dq(quantized_matmul | _linear | _conv2d)`` read only by float ops -> their ``_float`` forms.

    Requantizing a product to its calibrated int8 grid only to dequantize it
    again costs a rounding (and the epilogue's time) for nothing when no
    integer op reads it: attention's Q·Kᵀ (read by the softmax), a
    transformer's FFN up-projection (GELU) and attention output (residual
    add), a conv read by a float ReLU or a residual add.
    """
    changed = 0
    products = {fx_ops.quantized_matmul.default, fx_ops.quantized_linear.default, fx_ops.quantized_conv2d.default}
    for dq in list(graph.nodes("call_function")):
        if dq.target != fx_ops.dequantize.default:
            continue
        yq = dq.args[0]
        if not (isinstance(yq, torch.fx.Node) and yq.target in products and len(yq.users) == 1):
            continue
        if any(u.target == fx_ops.quantize.default for u in dq.users) or _ACC_SCALE not in yq.meta:
            continue
        scale = yq.meta[_ACC_SCALE]
        with graph.fx.inserting_before(dq):
            if yq.target == fx_ops.quantized_matmul.default:
                y = graph.fx.call_function(fx_ops.quantized_matmul_float.default, (*yq.args[:4], scale))
            else:
                x, zx, w, b = yq.args[:4]
                hint = str(w.target).removesuffix("_weight_i8")
                scale_node = graph.add_param(f"{hint}.out_scale", scale, before=dq)
                if yq.target == fx_ops.quantized_linear.default:
                    y = graph.fx.call_function(fx_ops.quantized_linear_float.default, (x, zx, w, b, scale_node))
                else:  # a conv: its attributes follow the output zero point
                    args = (x, zx, w, b, scale_node, *yq.args[7:])
                    y = graph.fx.call_function(fx_ops.quantized_conv2d_float.default, args)
        _replace(graph, dq, y)
        graph.fx.erase_node(yq)
        changed += 1
    for node in graph.nodes("call_function"):
        node.meta.pop(_ACC_SCALE, None)
    return changed


def _is_shared(node: Any) -> bool:
    """A float op taking its outputs from its first argument's values (observe's shared-parameter ops)."""
    return (
        isinstance(node, torch.fx.Node)
        and node.target in SHARED_PARAMS
        and isinstance(node.args[0], torch.fx.Node)
        and not any(isinstance(a, torch.fx.Node) for a in [*node.args[1:], *node.kwargs.values()])
    )


@dataclass(frozen=True)
class FoldQDQ(Pass):
    """Fold calibrated linears and convolutions into int8 kernels (see module doc)."""

    name = "fold-qdq"
    requires = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.QUANTIZED})
    # it rewrites weights into int8 from the very parameters `calibrated` names, and invalidates
    # nothing: what it left float keeps its parameters, and a second run must find nothing to do

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        folded, left = 0, {}
        for node in [n for n in graph.nodes("call_function") if self._candidate(n)]:
            reason = self._try(graph, node)
            if reason is None:
                folded += 1
            else:
                left[node.name] = reason
        cancelled = self._cleanup(graph)
        if folded:
            graph.drop_unused_params()
        return PassResult(graph, modified=folded > 0 or cancelled > 0, stats={"folded": folded, "float": left})

    @staticmethod
    def _candidate(node: torch.fx.Node) -> bool:
        """A linear, convolution (any: non-2-D ones are reported float) or quantizable matmul."""
        return node.target in _MATMUL or packet(node) in CONV | CONV_TRANSPOSE | {aten.linear}

    def _try(self, graph: Graph, node: torch.fx.Node) -> str | None:
        """Fold `node`, or say why it stays float."""
        if node.target in _MATMUL:
            return _why_not_matmul(node) or self._fold_matmul(graph, node)
        args = bind(node.target, node.args, node.kwargs)
        x, w, b = args["input"], args["weight"], args.get("bias")
        conv = () if packet(node) is aten.linear else _conv_attrs(node, args)
        if isinstance(conv, str):
            return conv
        if not (isinstance(w, torch.fx.Node) and w.op == "get_attr"):
            return "weight is not a parameter"
        if get(node, "dynamic") is not None:
            return self._fold_dynamic(graph, node, x, w, b)
        return _why_not(x, w, node) or self._fold(graph, node, x, w, b, conv)

    def _fold_dynamic(self, graph: Graph, node: torch.fx.Node, x: Any, w: torch.fx.Node, b: Any) -> str | None:
        """linear(x, w, b) marked dynamic -> dynamic_quantized_linear(x, w_i8, w_scale, b): float in and out."""
        pw = get(w, "qparams")
        if not isinstance(pw, QuantParams) or not pw.scheme.symmetric or bool((pw.zero_point != 0).any()):
            return "dynamic linear without symmetric weight parameters"
        weight = graph.param(w).double()
        sw = pw.scale.double().reshape(-1).expand(weight.shape[0])
        wq = _quantize_weight(weight, sw, pw)
        bias = graph.param(b).float() if isinstance(b, torch.fx.Node) else torch.zeros(weight.shape[0])
        hint = str(w.target).removesuffix(".weight")
        params = [
            graph.add_param(f"{hint}.{k}", v, before=node)
            for k, v in (("weight_i8", wq), ("weight_scale", sw.float().contiguous()), ("bias_f32", bias))
        ]
        with graph.fx.inserting_before(node):
            y = graph.fx.call_function(fx_ops.dynamic_quantized_linear.default, (x, *params))
        _replace(graph, node, y)
        y.meta[META_KEY].pop("dynamic", None)  # done: the op itself is dynamic
        return None

    def _fold(
        self, graph: Graph, node: torch.fx.Node, x: torch.fx.Node, w: torch.fx.Node, b: Any, conv: tuple[Any, ...]
    ) -> str | None:
        """Replace `node` by quantize -> integer op -> dequantize; `conv` holds a conv's attributes."""
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
        wq = _quantize_weight(weight, sw_rows, pw)
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
        op = fx_ops.quantized_conv2d.default if conv else fx_ops.quantized_linear.default
        with graph.fx.inserting_before(node):
            xq = graph.fx.call_function(fx_ops.quantize.default, (x, sx, zx, qmin, qmax))
            yq = graph.fx.call_function(op, (xq, zx, *params, zy, *conv))
            yq.meta[_ACC_SCALE] = (sx * sw_rows).float().contiguous()  # for `_float_products`
            _replace(graph, node, graph.fx.call_function(fx_ops.dequantize.default, (yq, sy, zy)))
        return None

    def _fold_matmul(self, graph: Graph, node: torch.fx.Node) -> str | None:
        """matmul(a, b) -> dequantize(quantized_matmul(quantize(a), quantize(b)))."""
        a, b = node.args[:2]
        (sa, za, *arange), (sb, zb, *brange) = _int8_view(get(a, "qparams")), _int8_view(get(b, "qparams"))
        sy, zy, _, _ = _int8_view(get(node, "qparams"))
        real = sa * sb / sy
        if not 2.0**-32 <= real < 2.0**30:
            return "requantization multiplier outside the fixed-point range"
        mult, shift = (int(t) for t in ops.requantize_params(torch.tensor([real], dtype=torch.float64)))
        with graph.fx.inserting_before(node):
            aq = graph.fx.call_function(fx_ops.quantize.default, (a, sa, za, *arange))
            bq = graph.fx.call_function(fx_ops.quantize.default, (b, sb, zb, *brange))
            yq = graph.fx.call_function(fx_ops.quantized_matmul.default, (aq, za, bq, zb, mult, shift, zy))
            yq.meta[_ACC_SCALE] = sa * sb  # for `_float_products`, should only float ops read the product
            _replace(graph, node, graph.fx.call_function(fx_ops.dequantize.default, (yq, sy, zy)))
        return None

    @staticmethod
    def _cleanup(graph: Graph) -> int:
        changed = _hoist_quantizes(graph) + FoldQDQ._cancel(graph)
        return changed + _float_products(graph)

    @staticmethod
    def _cancel(graph: Graph) -> int:
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
