"""Rewrite a graph's fxpress ops into standard PyTorch ops that ONNX exporters know (on a copy).

torch.onnx's exporter lowers ATen ops and torch's own quantization ops
(``quantized_decomposed``, what pt2e quantization produces) to ONNX; it knows
nothing of fxpress's ops. Each one becomes the float computation bracketed by
quantize / dequantize (the QDQ form runtimes fuse into their int8 kernels),
with the scales of `fxpress.export.scales`::

    quantize(x, s, z, qmin, qmax)          -> quantize_per_tensor(x, s, z)  [+ clamp(qmin, qmax) if narrower than 8 bits]
    dequantize(q, s, z)                    -> dequantize_per_tensor(q, s, z)
    quantized_linear(xq, .., w, b, ..)     -> quantize_per_tensor(linear(dq(xq), dq_c(w, sw, axis 0), dq_c(b, sx*sw)), sy, zy)
    quantized_linear_float(xq, .., w, b, ..) -> linear(dq(xq), dq_c(w, sw), dq_c(b, sx*sw))                  # float out
    quantized_conv2d(_float)               -> the same with conv2d; asymmetric padding as a pad of xq by zx
    quantized_matmul(a, .., b, ..)         -> quantize_per_tensor(matmul(dq(a), dq(b)), sy, zy)
    quantized_matmul_float(a, .., b, ..)   -> matmul(dq(a), dq(b))
    dynamic_quantized_linear(x, w, sw, b)  -> its per-row quantization in float ops, linear((u - zp), float(w)) * (s * sw) + b
    block_sparse_linear(x, blocks.., b)    -> linear(x, dense weight, b)    # dense float
    bf16_linear(x, w, b)                   -> linear(float(bf16(x)), float(bf16(w)), b)  # Casts to bfloat16 and back
    bf16_conv2d(x, w, b, ..)               -> conv2d(float(bf16(x)), float(bf16(w)), b, ..)
    fake_quantize(x, s, z, qmin, qmax, ..) -> dequantize(quantize(x, s, z)) [+ clamp], per channel along its axis

``dq_c`` is the per-channel dequantize (one scale per output channel, int8
weights, int32 bias at scale ``sx * sw``); a weight whose rows share one
scale gets a per-tensor one. Integer ops compute the same integers up to the
rounding of the float requantization (fxpress: a Q31 multiplier, round half
up; a QDQ runtime: a float32 multiplier, round half to even): at most one
step apart, rarely.

With ``activations="uint8"`` (the default) every int8 activation is written as
uint8 with its zero point + 128: the same real values (``(q + 128) - (z +
128) = q - z``), and the form ONNX Runtime's x86 kernels take for
convolutions (with int8 activations it leaves them float). Views, permutes
and max-pools of int8 values stay as they are: they commute with the shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

from fxpress.errors import ExportError
from fxpress.export.scales import FLOAT_OUT, MATMULS, REQUANT, Int8Scales, int8_scales, node_args
from fxpress.ir.graph import Graph
from fxpress.ir.sparse_ops import dense_weight

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
fx_ops = torch.ops.fxpress
ACTIVATIONS = ("uint8", "int8")
_INT32 = (-(2**31), 2**31 - 1)

FORMS = {  # how each fxpress op is written, as the export report says it
    fx_ops.quantize.default: "QuantizeLinear",
    fx_ops.dequantize.default: "DequantizeLinear",
    fx_ops.quantized_linear.default: "int8 QDQ",
    fx_ops.quantized_conv2d.default: "int8 QDQ",
    fx_ops.quantized_matmul.default: "int8 QDQ",
    fx_ops.quantized_linear_float.default: "int8 QDQ, float out",
    fx_ops.quantized_conv2d_float.default: "int8 QDQ, float out",
    fx_ops.quantized_matmul_float.default: "int8 QDQ, float out",
    fx_ops.dynamic_quantized_linear.default: "per-row dynamic int8 in float ops (no such op in ONNX)",
    fx_ops.block_sparse_linear.default: "dense float linear (no block-sparse op in ONNX)",
    fx_ops.fake_quantize.default: "QDQ (fake quantization)",
    fx_ops.bf16_linear.default: "linear on bf16-rounded input (Cast to bfloat16 and back)",
    fx_ops.bf16_conv2d.default: "conv2d on bf16-rounded input (Cast to bfloat16 and back)",
}


SUBSTITUTED = {fx_ops.dynamic_quantized_linear.default, fx_ops.block_sparse_linear.default}  # no ONNX form of their own


@dataclass(frozen=True)
class Rewritten:
    """One fxpress op of the source graph and the standard form it was written as.

    `substituted`: the op has no ONNX form and was written as float ops that
    compute the same (dynamic int8, block-sparse), which a report says.
    """

    node: str
    op: str
    form: str
    substituted: bool = False


def unsupported(node: torch.fx.Node) -> str | None:
    """Why `node` cannot be exported (no ONNX form, no float equivalent), or None."""
    if node.op != "call_function" or node.target in FORMS:
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverload) and target.namespace in ("aten", "quantized_decomposed"):
        return None
    if not isinstance(target, torch._ops.OpOverload):
        return None  # operator.getitem and the like: the exporter takes them
    if target.namespace == "fxpress":
        return f"{target.name()} is a backend-internal fxpress op (a TVM layout rewrite) with no ONNX form"
    return (
        f"{target.name()} is not an ATen or fxpress op: it has no ONNX form and no float equivalent the export "
        "knows; replace it with ATen ops in the model, or remove it before exporting"
    )


class _Writer:
    def __init__(self, graph: Graph, activations: str) -> None:
        self.graph = graph
        self.dtype = torch.uint8 if activations == "uint8" else torch.int8
        self.shift = 128 if activations == "uint8" else 0
        self.scales: Int8Scales = int8_scales(graph)
        self.done: list[Rewritten] = []

    # -- building blocks ----------------------------------------------------------------
    def call(self, op: Any, *args: Any) -> torch.fx.Node:
        return self.graph.fx.call_function(op, args)

    def buffer(self, hint: str, value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
        return self.graph.add_param(hint, value, before=before, buffer=True)

    def quantize(self, x: Any, scale: float, zp: int, qrange: tuple[int, int]) -> torch.fx.Node:
        lo, hi = qrange[0] + self.shift, qrange[1] + self.shift
        full = (-128 + self.shift, 127 + self.shift)
        q = self.call(qd.quantize_per_tensor.default, x, scale, zp + self.shift, *full, self.dtype)
        return q if (lo, hi) == full else self.call(aten.clamp.default, q, lo, hi)

    def dequantize(self, q: Any) -> torch.fx.Node:
        cls = self.scales.of(q)
        assert cls.scale is not None and cls.zero_point is not None
        zp, full = cls.zero_point + self.shift, (-128 + self.shift, 127 + self.shift)
        return self.call(qd.dequantize_per_tensor.default, q, cls.scale, zp, *full, self.dtype)

    def dequantize_rows(
        self,
        tensor: torch.fx.Node,
        scales: torch.Tensor,
        dtype: torch.dtype,
        qrange: tuple[int, int],
        at: torch.fx.Node,
    ) -> torch.fx.Node:
        """Per output channel (axis 0) dequantize of a weight or bias parameter; per tensor if all rows agree."""
        scales = scales.float()
        if bool((scales == scales[0]).all()):
            return self.call(qd.dequantize_per_tensor.default, tensor, float(scales[0]), 0, *qrange, dtype)
        hint = str(tensor.target)
        s = self.buffer(f"{hint}_scale", scales.contiguous(), at)
        z = self.buffer(f"{hint}_zero_point", torch.zeros(scales.numel(), dtype=torch.int64), at)
        return self.call(qd.dequantize_per_channel.default, tensor, s, z, 0, *qrange, dtype)

    # -- one rewrite per op ---------------------------------------------------------------
    def rewrite(self, node: torch.fx.Node) -> torch.fx.Node | None:
        """The standard node(s) computing what `node` does, inserted before it; None: leave it."""
        t, args = node.target, node_args(node)
        if t == fx_ops.quantize.default:
            return self.quantize(args[0], float(args[1]), int(args[2]), (int(args[3]), int(args[4])))
        if t == fx_ops.dequantize.default:
            return self.dequantize(args[0])
        if t in REQUANT | FLOAT_OUT:
            return self.weighted(node)
        if t in MATMULS:
            y = self.call(aten.matmul.default, self.dequantize(args[0]), self.dequantize(args[2]))
            return y if t == fx_ops.quantized_matmul_float.default else self.requantize(y, node)
        if t == fx_ops.dynamic_quantized_linear.default:
            return self.dynamic_linear(node)
        if t == fx_ops.block_sparse_linear.default:
            x, data, cols, _, bias = args
            dense = dense_weight(self.graph.param(data), self.graph.param(cols), int(x.meta["val"].shape[-1]))
            weight = self.graph.add_param(f"{node.name}.weight", dense, before=node)
            return self.call(aten.linear.default, x, weight, bias)
        if t == fx_ops.fake_quantize.default:
            return self.fake_quantize(node)
        if t == fx_ops.bf16_linear.default:
            x, weight, bias = args
            return self.call(aten.linear.default, self.bf16_values(x), self.bf16_values(weight), bias)
        if t == fx_ops.bf16_conv2d.default:
            x, weight, *rest = args
            return self.call(aten.conv2d.default, self.bf16_values(x), self.bf16_values(weight), *rest)
        return None

    def bf16_values(self, x: torch.fx.Node) -> torch.fx.Node:
        """float32 `x` rounded to bfloat16 values: a Cast to bfloat16 and back."""
        half = self.graph.fx.call_function(aten._to_copy.default, (x,), {"dtype": torch.bfloat16})
        return self.graph.fx.call_function(aten._to_copy.default, (half,), {"dtype": torch.float32})

    def dynamic_linear(self, node: torch.fx.Node) -> torch.fx.Node:
        """Per-row dynamic int8 in float ops, step for step as `fxpress.ir.ops.dynamic_quantized_linear`.

        The integer accumulation ``(u - zp) @ w.T`` runs as a float32 matmul of
        integer values, exact while every partial sum stays below 2^24 in
        magnitude (``255 * 127 * K`` bounds it; real activations stay far below).
        The weight is stored int8 and cast to float32 in the graph.
        """
        x, w, w_scale, bias = node_args(node)
        eps = torch.finfo(torch.float32).eps
        lo = self.call(aten.clamp.default, self.call(aten.amin.default, x, [-1], True), None, 0.0)
        hi = self.call(aten.clamp.default, self.call(aten.amax.default, x, [-1], True), 0.0)
        scale = self.call(
            aten.clamp.default, self.call(aten.div.Tensor, self.call(aten.sub.Tensor, hi, lo), 255.0), eps
        )
        zp = self.call(aten.round.default, self.call(aten.div.Tensor, self.call(aten.neg.default, lo), scale))
        zp = self.call(aten.clamp.default, zp, 0.0, 255.0)
        u = self.call(aten.add.Tensor, self.call(aten.round.default, self.call(aten.div.Tensor, x, scale)), zp)
        centred = self.call(aten.sub.Tensor, self.call(aten.clamp.default, u, 0.0, 255.0), zp)
        weight = self.graph.fx.call_function(aten._to_copy.default, (w,), {"dtype": torch.float32})
        acc = self.call(aten.linear.default, centred, weight)
        y = self.call(aten.mul.Tensor, acc, self.call(aten.mul.Tensor, scale, w_scale))
        return self.call(aten.add.Tensor, y, bias)

    def requantize(self, y: torch.fx.Node, node: torch.fx.Node) -> torch.fx.Node:
        cls = self.scales.of(node)
        assert cls.scale is not None and cls.zero_point is not None
        return self.quantize(y, cls.scale, cls.zero_point, (-128, 127))

    def weighted(self, node: torch.fx.Node) -> torch.fx.Node:
        """A linear or conv: dequantized input, weight and bias, the float op, and the requantize unless float out."""
        x, _, w, b = node_args(node)[:4]
        assert isinstance(x, torch.fx.Node) and isinstance(w, torch.fx.Node) and isinstance(b, torch.fx.Node)
        sx = self.scales.of(x).scale
        assert sx is not None
        sw = self.scales.weight_scales[node]
        weight = self.dequantize_rows(w, sw, torch.int8, (-128, 127), node)
        bias = self.dequantize_rows(b, sx * sw, torch.int32, _INT32, node)
        conv = node.target not in (fx_ops.quantized_linear.default, fx_ops.quantized_linear_float.default)
        if not conv:
            y = self.call(aten.linear.default, self.dequantize(x), weight, bias)
        else:
            stride, padding, dilation, groups = node_args(node)[-4:]
            top, left, bottom, right = padding
            if (top, left) != (bottom, right):  # pad the int8 input with its zero point: real zeros
                cls = self.scales.of(x)
                assert cls.zero_point is not None
                x = self.call(aten.constant_pad_nd.default, x, [left, right, top, bottom], cls.zero_point + self.shift)
                self.scales.classes[x] = cls
                top = left = 0
            xf = self.dequantize(x)
            y = self.call(aten.conv2d.default, xf, weight, bias, stride, [top, left], dilation, groups)
        if node.target in FLOAT_OUT:
            return y
        return self.requantize(y, node)

    def fake_quantize(self, node: torch.fx.Node) -> torch.fx.Node:
        x, scale, zero_point, qmin, qmax, axis, _ = node_args(node)
        s = self.graph.param(scale).float().clamp_min(torch.finfo(torch.float32).eps).reshape(-1)
        z = torch.round(self.graph.param(zero_point).float()).clamp(qmin, qmax).reshape(-1).to(torch.int64)
        dtype = torch.uint8 if qmin >= 0 and qmax <= 255 else torch.int8 if qmin >= -128 and qmax <= 127 else None
        if dtype is None:
            raise ExportError(
                f"{node.name}: fake_quantize to [{qmin}, {qmax}] is wider than 8 bits: QuantizeLinear has no such type",
                node=node.name,
            )
        full = (0, 255) if dtype == torch.uint8 else (-128, 127)
        if int(axis) < 0 or s.numel() == 1:
            q = self.call(qd.quantize_per_tensor.default, x, float(s[0]), int(z[0]), *full, dtype)
            clamped = q if (qmin, qmax) == full else self.call(aten.clamp.default, q, qmin, qmax)
            return self.call(qd.dequantize_per_tensor.default, clamped, float(s[0]), int(z[0]), *full, dtype)
        s_node = self.buffer(f"{node.name}_scale", s, node)
        z_node = self.buffer(f"{node.name}_zero_point", z, node)
        q = self.call(qd.quantize_per_channel.default, x, s_node, z_node, int(axis), qmin, qmax, dtype)
        return self.call(qd.dequantize_per_channel.default, q, s_node, z_node, int(axis), *full, dtype)


@dataclass
class Standard:
    """A standard-ops copy of a graph, what became of each fxpress op, and the int8 scales that were chosen."""

    graph: Graph
    nodes: list[Rewritten]
    chosen_scales: list[str]


def standard_graph(graph: Graph, activations: str = "uint8") -> Standard:
    """A copy of `graph` with every fxpress op rewritten into standard ops (see the module doc).

    Raises `ExportError` naming the first node whose op has no standard form.
    """
    if activations not in ACTIVATIONS:
        raise ExportError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    for node in graph.nodes("call_function"):
        why = unsupported(node)
        if why is not None:
            raise ExportError(f"cannot export node {node.name}: {why}", node=node.name)
    work = graph.copy()
    writer = _Writer(work, activations)
    for node in list(work.nodes("call_function")):
        with work.fx.inserting_before(node):
            new = writer.rewrite(node)
        if new is None:
            continue
        op = str(node.target).removesuffix(".default")
        target: Any = node.target
        writer.done.append(Rewritten(node.name, op, FORMS[target], target in SUBSTITUTED))
        if node in writer.scales.classes:  # readers of the int8 value now read the standard node
            writer.scales.classes[new] = writer.scales.classes[node]
        node.replace_all_uses_with(new)
        work.fx.erase_node(node)
    work.fx.eliminate_dead_code()
    work.drop_unused_params()
    work.recompile()
    return Standard(work, writer.done, writer.scales.chosen)
