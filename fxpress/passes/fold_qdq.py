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

then the clean-up rules (`fxpress.passes.qdq_rules`, run by the greedy driver
`fxpress.ir.rewrite`) let int8 flow between the integer ops:

    hoist      q(S(t), s, z) -> S(q(t, s, z))      # S only moves or maxes values (max-pool, view, permute, ...)
    cancel     q(dq(t, s, z), s, z) -> t           # back-to-back boundaries with equal params cancel
    dedupe     two equal quantize(%x, ...) -> one  # Q, K and V share one quantized input
    float-out  dq(quantized_matmul(a, b)) -> quantized_matmul_float(a, b)   # when only float ops read it (Q·Kᵀ)
               dq(quantized_linear(x, ..)) -> quantized_linear_float(x, ..) # likewise (FFN up, attention output)
               dq(quantized_conv2d(x, ..)) -> quantized_conv2d_float(x, ..) # likewise (a ReLU, a residual add)

A layer that ``calibrate{bias-correction=true}`` gave an `InputMean` has the
mean output shift of its rounded weights, ``(W_q - W) . E[x]``, subtracted
from its bias before the bias is rounded to int32 (fxpress.quant.bias_correction).

A weight's `Sparsity` annotation (``sparsify``, ``annotate-sparsity``) is measured again
on its int8 form and put on the int8 parameter, so the TVM backend keeps the
block-sparse kernel (an int8 one) for such linears.

Convolutions are NCHW 2-D ones (``aten.conv2d``, its ``padding="same"``
form, or a non-transposed ``aten.convolution``): regular, depthwise and
grouped, any stride, padding and dilation. Weights are quantized once here and
stored as int8 parameters (the float weight is dropped; log-level weights,
``observe{weight-scheme=log}``, round to the nearest of 0 and +-2^k, int8
values the same kernels multiply exactly); the bias becomes
int32 at scale ``sx * sw``; the requantization multiplier ``sx * sw[o] / sy``
becomes a Q31 multiplier and a shift (`fxpress.ir.ops.requantize_params`).
uint8 activation parameters are re-expressed as int8 (zero point - 128: the
same real values). A ReLU after the op stays a float op between a dequantize
and a quantize with its own parameters (the integer kernels have no fused
clamp yet).

Option ``cleanup``: the clean-up rules to run, all four by default;
``fold-qdq{cleanup=[cancel,dedupe,float-out]}`` leaves quantizes below the
max-pools and views (tests compare the two).

Requires: ``calibrated``. Establishes: ``quantized``. Forbids ``fake-quantized``
(run ``freeze-fake-quant`` first: the trained parameters live in the
fake-quantize ops until then). Numerics: the int8
result equals the integer reference bit for bit (eager and TVM); against fake
quantization in float it differs by at most one output step (rounding of the
int32 bias and of the fixed-point multiplier). Leaves alone: (reported in
``stats["float"]`` with the reason) ops whose input, weight or output has
no parameters, per-channel or log-level activations, weights with a
non-zero zero point, multipliers outside the fixed-point range, transposed and non-2-D
convolutions, matmuls with a constant operand (a linear is the integer form of
those) or a 1-D operand. Add and cat are not folded yet: they stay float
(correct, not faster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from fxpress.errors import PassError
from fxpress.ir import ops
from fxpress.ir.annotations import META_KEY, annotate, get
from fxpress.ir.graph import Graph
from fxpress.ir.opsets import CONV, CONV_TRANSPOSE, bind, is_transposed_conv, packet
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.passes.qdq_rules import RULES, clean_up, takes_place_of
from fxpress.quant.annotations import QuantParams
from fxpress.quant.bias_correction import InputMean, mean_shift
from fxpress.quant.qat_graph import is_fake_quant
from fxpress.quant.scheme import round_to_levels
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.pattern import parse_pattern

aten = torch.ops.aten
fx_ops = torch.ops.fxpress
_MATMUL = {aten.matmul.default, aten.bmm.default}  # the products quantized_matmul takes (observe's roots)


def _int8_view(p: QuantParams) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of per-tensor params, expressed in int8."""
    qmin, qmax = p.scheme.qrange
    shift = 128 if qmin >= 0 else 0  # uint8 -> int8: same real values
    return float(p.scale.item()), int(p.zero_point.item()) - shift, qmin - shift, qmax - shift


def _qparams(node: Any) -> QuantParams | None:
    """The quantization parameters calibrate gave `node`, if it is a node and has them."""
    p = get(node, "qparams") if isinstance(node, torch.fx.Node) else None
    return p if isinstance(p, QuantParams) else None


def _why_not(x: Any, w: Any, node: torch.fx.Node) -> str | None:
    px, pw, py = _qparams(x), _qparams(w), _qparams(node)
    if px is None or pw is None or py is None:
        return "input, weight or output has no quantization parameters"
    if px.axis is not None or py.axis is not None:
        return "per-channel activation parameters"
    if px.scheme.log_levels or py.scheme.log_levels:
        return "log-level activations (log levels are for weights only)"
    if bool((pw.zero_point != 0).any()):
        return "weight zero point is not 0 (integer kernels need symmetric weights)"
    if pw.axis not in (None, 0):
        return f"weight quantized along axis {pw.axis}, not the output channels"
    return None


def _why_not_matmul(node: torch.fx.Node) -> str | None:
    a, b = node.args[:2]
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and "get_attr" not in (a.op, b.op)):
        return "an operand is a constant (use a linear for constant weights)"
    if a.meta["val"].dim() < 2 or b.meta["val"].dim() < 2:
        return "a 1-D operand"
    pa, pb, py = _qparams(a), _qparams(b), _qparams(node)
    if pa is None or pb is None or py is None:
        return "an operand or the output has no quantization parameters"
    if any(p.axis is not None for p in (pa, pb, py)):
        return "per-channel activation parameters"
    if any(p.scheme.log_levels for p in (pa, pb, py)):
        return "log-level activations (log levels are for weights only)"
    return None


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
    """int8 weights: ``round(w / scale[o])`` clamped to the scheme's range ([-128, 127], [-64, 63] reduced);
    for log levels the nearest of zero and +-2^k (`round_to_levels`)."""
    scales = row_scales.reshape(-1, *[1] * (weight.dim() - 1))
    return round_to_levels(weight / scales, pw.scheme).to(torch.int8)


def _carry_sparsity(w: torch.fx.Node, w_i8: torch.fx.Node, wq: torch.Tensor) -> None:
    """The float weight's `Sparsity` pattern, measured again on its int8 form (zeros stay zeros; more may round to 0).

    The backend reads it to keep the block-sparse kernel (int8 now; backends/tvm/block_sparse.py).
    """
    note = get(w, Sparsity.key)
    if isinstance(note, Sparsity):
        annotate(w_i8, Sparsity.of(wq, parse_pattern(note.pattern)))


def _replace(graph: Graph, node: torch.fx.Node, y: torch.fx.Node) -> None:
    """`y` (the dequantized integer result) takes `node`'s place, its output facts and source line."""
    takes_place_of(y, node)
    node.replace_all_uses_with(y)
    graph.fx.erase_node(node)


@dataclass(frozen=True)
class FoldQDQ(Pass):
    """Fold calibrated linears and convolutions into int8 kernels (see module doc)."""

    name = "fold-qdq"
    requires = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.QUANTIZED})
    # fake-quantize ops hold trained parameters that are not annotations until freeze-fake-quant:
    # refused before anything runs, not after observe, calibrate and a trainer have run
    forbids = frozenset({Property.FAKE_QUANTIZED})
    # it rewrites weights into int8 from the very parameters `calibrated` names, and invalidates
    # nothing: what it left float keeps its parameters, and a second run must find nothing to do

    cleanup: tuple[str, ...] = RULES

    def __post_init__(self) -> None:
        unknown = [r for r in self.cleanup if r not in RULES]
        if unknown:
            raise ValueError(f"unknown clean-up rules {unknown}; valid: {', '.join(RULES)}")

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        held = [n.name for n in graph.nodes("call_function") if is_fake_quant(n)]
        if held:
            raise PassError(
                f"fold-qdq: the graph still holds {len(held)} fake-quantize ops ({', '.join(held[:3])}, ...) whose "
                "trained parameters are not annotations yet; run freeze-fake-quant before fold-qdq",
                node=held[0],
            )
        folded, left = 0, {}
        acc_scales: dict[torch.fx.Node, Any] = {}  # each product's x_scale * w_scale, for the float-out rule
        for node in [n for n in graph.nodes("call_function") if self._candidate(n)]:
            reason = self._try(graph, node, acc_scales)
            if reason is None:
                folded += 1
            else:
                left[node.name] = reason
        cancelled = clean_up(graph, acc_scales, self.cleanup)
        if folded:
            graph.drop_unused_params()
        return PassResult(graph, modified=folded > 0 or cancelled > 0, stats={"folded": folded, "float": left})

    @staticmethod
    def _candidate(node: torch.fx.Node) -> bool:
        """A linear, convolution (any: non-2-D ones are reported float) or quantizable matmul."""
        return node.target in _MATMUL or packet(node) in CONV | CONV_TRANSPOSE | {aten.linear}

    def _try(self, graph: Graph, node: torch.fx.Node, acc_scales: dict[torch.fx.Node, Any]) -> str | None:
        """Fold `node`, or say why it stays float; a product's accumulator scale goes into `acc_scales`."""
        if node.target in _MATMUL:
            return _why_not_matmul(node) or self._fold_matmul(graph, node, acc_scales)
        args = bind(node.target, node.args, node.kwargs)
        x, w, b = args["input"], args["weight"], args.get("bias")
        conv = () if packet(node) is aten.linear else _conv_attrs(node, args)
        if isinstance(conv, str):
            return conv
        if not (isinstance(w, torch.fx.Node) and w.op == "get_attr"):
            return "weight is not a parameter"
        if get(node, "dynamic") is not None:
            return self._fold_dynamic(graph, node, x, w, b)
        return _why_not(x, w, node) or self._fold(graph, node, x, w, b, conv, acc_scales)

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
        self,
        graph: Graph,
        node: torch.fx.Node,
        x: torch.fx.Node,
        w: torch.fx.Node,
        b: Any,
        conv: tuple[Any, ...],
        acc_scales: dict[torch.fx.Node, Any],
    ) -> str | None:
        """Replace `node` by quantize -> integer op -> dequantize; `conv` holds a conv's attributes."""
        px, pw, py = _qparams(x), _qparams(w), _qparams(node)
        assert px is not None and pw is not None and py is not None  # `_why_not` checked them
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
        mean = get(node, InputMean.key)
        if isinstance(mean, InputMean):  # calibrate{bias-correction=true}: take out the mean shift dW . E[x]
            scales = sw_rows.reshape(-1, *[1] * (weight.dim() - 1))
            bias = bias - mean_shift(mean, wq.double() * scales - weight, conv)
        bq = torch.round(bias / (sx * sw_rows)).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        hint = str(w.target).removesuffix(".weight")
        params = [
            graph.add_param(f"{hint}.{k}", v, before=node)
            for k, v in (("weight_i8", wq), ("bias_i32", bq), ("requant_mult", mult), ("requant_shift", shift))
        ]
        _carry_sparsity(w, params[0], wq)
        op = fx_ops.quantized_conv2d.default if conv else fx_ops.quantized_linear.default
        with graph.fx.inserting_before(node):
            xq = graph.fx.call_function(fx_ops.quantize.default, (x, sx, zx, qmin, qmax))
            yq = graph.fx.call_function(op, (xq, zx, *params, zy, *conv))
            acc_scales[yq] = (sx * sw_rows).float().contiguous()  # for the float-out rule
            _replace(graph, node, graph.fx.call_function(fx_ops.dequantize.default, (yq, sy, zy)))
        return None

    def _fold_matmul(self, graph: Graph, node: torch.fx.Node, acc_scales: dict[torch.fx.Node, Any]) -> str | None:
        """matmul(a, b) -> dequantize(quantized_matmul(quantize(a), quantize(b)))."""
        a, b = node.args[:2]
        pa, pb, py = _qparams(a), _qparams(b), _qparams(node)
        assert pa is not None and pb is not None and py is not None  # `_why_not_matmul` checked them
        (sa, za, *arange), (sb, zb, *brange) = _int8_view(pa), _int8_view(pb)
        sy, zy, _, _ = _int8_view(py)
        real = sa * sb / sy
        if not 2.0**-32 <= real < 2.0**30:
            return "requantization multiplier outside the fixed-point range"
        mult, shift = (int(t) for t in ops.requantize_params(torch.tensor([real], dtype=torch.float64)))
        with graph.fx.inserting_before(node):
            aq = graph.fx.call_function(fx_ops.quantize.default, (a, sa, za, *arange))
            bq = graph.fx.call_function(fx_ops.quantize.default, (b, sb, zb, *brange))
            yq = graph.fx.call_function(fx_ops.quantized_matmul.default, (aq, za, bq, zb, mult, shift, zy))
            acc_scales[yq] = sa * sb  # for the float-out rule, should only float ops read the product
            _replace(graph, node, graph.fx.call_function(fx_ops.dequantize.default, (yq, sy, zy)))
        return None
