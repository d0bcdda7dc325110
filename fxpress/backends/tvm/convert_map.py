"""Converters from fxpress's own torch.library ops (fxpress/ir/ops.py) to Relax.

`from_exported_program(..., custom_convert_map=converters(spec))` looks ops up
by ``node.target.__name__`` (``"quantized_linear.default"``); each converter
is ``f(node, importer) -> relax.Expr`` and emits through
``importer.block_builder``. Every converter computes exactly the integer
arithmetic of the op's PyTorch reference, so compiled results are bit-exact.

The int8 ops (``quantized_linear``, ``quantized_conv2d``, ``quantized_matmul``,
``dynamic_quantized_linear``, float-out variants, NHWC conv variants) are
plumbing here: arguments read, leading dimensions flattened, the int32-fit
proofs (`narrow`) made on constant operands; what is emitted, in which
layouts and for which kernels, is the target ISA's `Int8Lowering`
(``spec.isa.int8_lowering``; isa/generic.py, isa/x86_avx2/int8.py, ...);
``bf16_linear`` and ``bf16_conv2d`` likewise are the ISA's `Bf16Lowering` (isa/base.py, isa/x86_amx/bf16.py).
The quantize converter takes a last-axis softmax into itself (te_softmax.py),
and CPU max-pools become te_pool's separable passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from tvm import relax, te, tirx

from fxpress.backends.tvm.aten_fixes import CONVERTERS as ATEN_FIXES
from fxpress.backends.tvm.block_sparse import convert_block_sparse_linear, convert_block_sparse_quantized_linear
from fxpress.backends.tvm.isa import Bf16Lowering, Conv, Int8Weight, Requant
from fxpress.backends.tvm.targets import TargetSpec
from fxpress.backends.tvm.te_pool import te_max_pool2d_nhwc, te_max_pool2d_separable
from fxpress.backends.tvm.te_requant import te_dequantize, te_quantize
from fxpress.backends.tvm.te_softmax import te_softmax_quantize

Converter = Callable[[Any, Any], relax.Expr]


def _is_call(expr: relax.Expr | None, op: str) -> bool:
    """`expr` is a call of the Relax operator named `op`."""
    return isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == op


def _is_last_axis_softmax(expr: relax.Expr | None) -> bool:
    """`expr` is a float32 ``nn.softmax`` over its last axis."""
    if not _is_call(expr, "relax.nn.softmax"):
        return False
    ndim = len(expr.ty.shape.values) if hasattr(expr.ty, "shape") and expr.ty.shape is not None else -1
    axis = int(expr.attrs.axis)
    return expr.ty.dtype == "float32" and ndim > 0 and axis in (-1, ndim - 1)


def converters(spec: TargetSpec, constants: Mapping[str, torch.Tensor] | None = None) -> dict[str, Converter]:
    """The custom_convert_map for `spec` (panel widths depend on the target).

    `constants` maps the exported program's placeholder names to their values
    (weights); with them, int8 layers whose weights cannot saturate it take the
    u8s8 kernels on AVX2.
    """
    int8 = spec.isa.int8_lowering(spec.target)

    def weight(node: Any, expr: relax.Expr, weight_arg: int = 2) -> Int8Weight:
        """`node`'s int8 weight (``args[weight_arg]``) with its value when it is a known constant."""
        arg = node.args[weight_arg]
        value = constants.get(arg.name) if constants and hasattr(arg, "name") else None
        return Int8Weight(expr, value)

    def narrow(node: Any, shifts: bool = True) -> bool:
        """`node`'s requantization may run in int32 (see `requantize`): proven on its constant operands.

        `shifts` False (a float-out op): only that ``acc + bias`` fits int32.
        """
        names = [getattr(node.args[i], "name", None) for i in ((2, 3, 5) if shifts else (2, 3))]
        values = [constants.get(n) if constants and n else None for n in names]
        if any(v is None for v in values):
            return False
        weight, bias, *shift = (v.to(torch.int64) for v in values)  # type: ignore[union-attr]
        reach = 255 * int(weight.abs().flatten(1).sum(1).max()) if weight.dim() > 1 else 1 << 31
        return (not shift or int(shift[0].min()) >= 1) and int(bias.abs().max()) + 2 * reach < (1 << 31)

    def quantize(node: Any, importer: Any) -> relax.Expr:
        x, scale, zero_point, qmin, qmax = importer.retrieve_args(node)
        bb = importer.block_builder
        source = bb.lookup_binding(x) if isinstance(x, relax.Var) else None
        if _is_last_axis_softmax(source):  # one divide per row (te_softmax.py); stage dead-code drops the softmax
            args = (source.args[0], float(scale), int(zero_point), int(qmin), int(qmax))
            return bb.emit(bb.call_te(te_softmax_quantize, *args, primfunc_name_hint="softmax_quantize"))
        return bb.emit(
            bb.call_te(
                te_quantize, x, float(scale), int(zero_point), int(qmin), int(qmax), primfunc_name_hint="quantize"
            )
        )

    def dequantize(node: Any, importer: Any) -> relax.Expr:
        q, scale, zero_point = importer.retrieve_args(node)
        bb = importer.block_builder
        return bb.emit(bb.call_te(te_dequantize, q, float(scale), int(zero_point), primfunc_name_hint="dequantize"))

    def quantized_linear(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp = importer.retrieve_args(node)
        rq = Requant(multiplier, shift, int(out_zp), None, narrow(node))
        return _linear(importer, x, x_zp, weight(node, w), bias, rq)

    def quantized_linear_float(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, scale = importer.retrieve_args(node)
        return _linear(importer, x, x_zp, weight(node, w), bias, Requant(None, None, 0, scale, narrow(node, False)))

    def _linear(importer: Any, x: Any, x_zp: Any, w: Int8Weight, bias: Any, rq: Requant) -> relax.Expr:
        """Both linear ops; rows flattened, so the GEMM rules see one row loop (they fuse none)."""
        bb = importer.block_builder
        n = int(w.expr.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        if len(lead) > 1:
            x2 = bb.emit(relax.op.reshape(x, (-1, k)))
            return bb.emit(relax.op.reshape(int8.linear(bb, x2, int(x_zp), w, bias, rq), (*lead, n)))
        return int8.linear(bb, x, int(x_zp), w, bias, rq)

    def quantized_conv2d(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp, *attrs = importer.retrieve_args(node)
        return _conv(
            importer, node, x, x_zp, w, bias, Requant(multiplier, shift, int(out_zp), None, narrow(node)), attrs
        )

    def quantized_conv2d_float(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, scale, *attrs = importer.retrieve_args(node)
        return _conv(importer, node, x, x_zp, w, bias, Requant(None, None, 0, scale, narrow(node, False)), attrs)

    def quantized_conv2d_nhwc(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp, *attrs = importer.retrieve_args(node)
        rq = Requant(multiplier, shift, int(out_zp), None, narrow(node))
        return _conv(importer, node, x, x_zp, w, bias, rq, attrs, channels_last=True)

    def quantized_conv2d_float_nhwc(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, scale, *attrs = importer.retrieve_args(node)
        rq = Requant(None, None, 0, scale, narrow(node, False))
        return _conv(importer, node, x, x_zp, w, bias, rq, attrs, channels_last=True)

    def _conv(
        importer: Any,
        node: Any,
        x: Any,
        x_zp: Any,
        w: Any,
        bias: Any,
        rq: Requant,
        conv: list,
        channels_last: bool = False,
    ) -> relax.Expr:
        """All conv ops; `channels_last`: NHWC in and out (layout_ops.py)."""
        stride, padding, dilation, groups = conv
        attrs = (tuple(stride), tuple(padding), tuple(dilation), (int(groups),))
        return int8.conv2d(importer.block_builder, x, int(x_zp), weight(node, w), bias, rq, Conv(attrs, channels_last))

    def quantized_matmul(node: Any, importer: Any) -> relax.Expr:
        a, a_zp, b, b_zp, multiplier, shift, out_zp = importer.retrieve_args(node)
        scalars = (int(multiplier), int(shift), int(out_zp))
        return int8.matmul(importer.block_builder, a, int(a_zp), b, int(b_zp), scalars, None)

    def quantized_matmul_float(node: Any, importer: Any) -> relax.Expr:
        a, a_zp, b, b_zp, scale = importer.retrieve_args(node)
        return int8.matmul(importer.block_builder, a, int(a_zp), b, int(b_zp), (0, 0, 0), float(scale))

    def dynamic_quantized_linear(node: Any, importer: Any) -> relax.Expr:
        x, w, weight_scale, bias = importer.retrieve_args(node)
        bb = importer.block_builder
        n = int(w.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        x2 = bb.emit(relax.op.reshape(x, (-1, k))) if len(lead) != 1 else x
        y = int8.dynamic_linear(bb, x2, weight(node, w, weight_arg=1), weight_scale, bias)
        return bb.emit(relax.op.reshape(y, (*lead, n))) if len(lead) != 1 else y

    table = {
        "dynamic_quantized_linear.default": dynamic_quantized_linear,
        "bf16_linear.default": _bf16_linear(spec.isa.bf16_lowering(spec.target)),
        "bf16_conv2d.default": _bf16_conv2d(spec.isa.bf16_lowering(spec.target)),
        "quantize.default": quantize,
        "dequantize.default": dequantize,
        "quantized_linear.default": quantized_linear,
        "quantized_linear_float.default": quantized_linear_float,
        "quantized_conv2d.default": quantized_conv2d,
        "quantized_conv2d_float.default": quantized_conv2d_float,
        "quantized_conv2d_nhwc.default": quantized_conv2d_nhwc,
        "quantized_conv2d_float_nhwc.default": quantized_conv2d_float_nhwc,
        "max_pool2d_nhwc.default": max_pool2d_nhwc,
        "quantized_matmul.default": quantized_matmul,
        "quantized_matmul_float.default": quantized_matmul_float,
        "block_sparse_linear.default": convert_block_sparse_linear(spec),
        "block_sparse_quantized_linear.default": convert_block_sparse_quantized_linear(spec, constants),
        "block_sparse_quantized_linear_float.default": convert_block_sparse_quantized_linear(spec, constants, True),
    }
    table.update(ATEN_FIXES)
    if spec.device == "cpu":
        table["max_pool2d.default"] = max_pool2d
        table["max_pool2d_with_indices.default"] = max_pool2d_with_indices
    return table


OPAQUE = 8  # relax's OpPatternKind kOpaque: FuseOps leaves the function alone


def _bf16_linear(lowering: Bf16Lowering) -> Converter:
    """``bf16_linear``: leading dimensions flattened, then the ISA's `Bf16Lowering`."""

    def convert(node: Any, importer: Any) -> relax.Expr:
        x, w, bias = importer.retrieve_args(node)
        bb = importer.block_builder
        n = int(w.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        x2 = bb.emit(relax.op.reshape(x, (-1, k))) if len(lead) != 1 else x
        y = lowering.linear(bb, x2, w, bias)
        return bb.emit(relax.op.reshape(y, (*lead, n))) if len(lead) != 1 else y

    return convert


def _bf16_conv2d(lowering: Bf16Lowering) -> Converter:
    """``bf16_conv2d``: aten.conv2d's arguments read (padding as top, left, bottom, right), then the ISA's lowering."""

    def convert(node: Any, importer: Any) -> relax.Expr:
        x, w, bias, stride, padding, dilation, groups = importer.retrieve_args(node)
        ph, pw = (int(p) for p in padding)
        attrs = (tuple(int(s) for s in stride), (ph, pw, ph, pw), tuple(int(d) for d in dilation), (int(groups),))
        return lowering.conv2d(importer.block_builder, x, w, bias, attrs)

    return convert


def _pair_of(v: Any) -> tuple[int, int]:
    v = [int(i) for i in ([v] if isinstance(v, int) else v)]
    return (v[0], v[-1])


def _separable_pool(node: Any, importer: Any) -> relax.Expr | None:
    """te_pool's separable two passes for a max-pool `node`, or None where they do not apply.

    Emitted unfused (opaque), so kernels/pool.py schedules exactly its two
    passes. Ceil mode, 3-D input and symbolic shapes are left to the importer.
    """
    args = importer.retrieve_args(node)
    x, kernel = args[0], _pair_of(args[1])
    stride = _pair_of(args[2]) if len(args) > 2 and args[2] else kernel
    padding = _pair_of(args[3]) if len(args) > 3 else (0, 0)
    dilation = _pair_of(args[4]) if len(args) > 4 else (1, 1)
    ceil_mode = bool(args[5]) if len(args) > 5 else False
    shape = x.ty.shape
    static = shape is not None and all(isinstance(d, tirx.IntImm) for d in shape.values)
    if ceil_mode or x.ty.ndim != 4 or not static:
        return None
    x_te = te.placeholder([int(d) for d in shape.values], str(x.ty.dtype), name="x")
    y_te = te_max_pool2d_separable(x_te, kernel, stride, padding, dilation)
    func = te.create_prim_func([x_te, y_te]).with_attr("op_pattern", OPAQUE)
    bb = importer.block_builder
    gv = bb.add_func(func, "max_pool2d_separable")
    out = relax.TensorType([int(d) for d in y_te.shape], str(x.ty.dtype))
    return bb.emit(relax.call_tir(gv, (x,), out))


def max_pool2d_nhwc(node: Any, importer: Any) -> relax.Expr:
    """``fxpress::max_pool2d_nhwc`` (layout_ops.py): te_pool's one-pass NHWC pool, unfused."""
    x, kernel, stride, padding, dilation = importer.retrieve_args(node)
    pool = (_pair_of(kernel), _pair_of(stride), _pair_of(padding), _pair_of(dilation))
    bb = importer.block_builder
    call = bb.call_te(te_max_pool2d_nhwc, x, *pool, primfunc_name_hint="max_pool2d_nhwc")
    gv = call.args[0]
    bb.update_func(gv, bb.get()[gv].with_attr("op_pattern", OPAQUE))  # unfused: the shape kernels/pool.py takes
    return bb.emit(call)


def max_pool2d(node: Any, importer: Any) -> relax.Expr:
    """``aten.max_pool2d`` on CPU (any dtype; int8 after fold-qdq): `_separable_pool` where it applies."""
    out = _separable_pool(node, importer)
    return importer._max_pool2d(node) if out is None else out


def max_pool2d_with_indices(node: Any, importer: Any) -> relax.Expr:
    """The decomposed form (what ``run_decompositions`` leaves): separable when nothing reads the indices."""
    indices_used = any(u.args[1] != 0 for u in node.users)
    out = None if indices_used else _separable_pool(node, importer)
    if out is None:
        return importer._max_pool2d_with_indices(node)
    return importer.block_builder.emit(relax.Tuple([out, relax.op.zeros_like(out)]))
