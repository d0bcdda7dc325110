"""Converters from fxpress's own torch.library ops (fxpress/ir/ops.py) to Relax.

`from_exported_program(..., custom_convert_map=converters(spec))` looks ops up
by ``node.target.__name__`` (``"quantized_linear.default"``); each converter
is ``f(node, importer) -> relax.Expr`` and emits through
``importer.block_builder``. Every converter computes exactly the integer
arithmetic of the op's PyTorch reference, so compiled results are bit-exact.

``quantized_linear`` is the int8 lowering entry: int8 activations, int8
weights (packed into the matmul rule's panels by a ``layout_transform`` that
``LiftTransformParams`` moves to compile time), int32 bias and per-channel
fixed-point requantization, int8 out. The int32 accumulation block has the
multiply-accumulate shape the CPU matmul rule schedules; the requantization
is its fused epilogue. On AVX2 CPUs the converter emits one of the two exact
forms of kernels/int8_avx2.py instead: u8s8 (``vpmaddubsw``: uint8 ``x + 128``
in groups of 4, int8 weight panels, the shift undone through the bias) when
the layer's actual weights cannot saturate it (`u8s8_safe`, checked here on
the values), else s16 (``vpmaddwd``: int16-widened operands in pairs).

``quantized_conv2d`` (NCHW int8 in and out): on AVX2, groups=1 convs become a
direct convolution (kernels/int8_conv_avx2.py), u8s8 or s16 by the same test:
a prologue shifts (``x + 128``, padding ``x_zp + 128``) or widens
(``x - x_zp``, padding 0) the input into padded NHWC channel groups, the
weights are packed once at compile time as ``[O/8, KH, KW, C/V, 8, V]``, and
the requantization writes NCHW int8 from each register tile. Depthwise and grouped convs, and
CPUs without AVX2, take the generic form: ``pad(x - x_zp)`` as int16 and an
int32-accumulating NCHW conv (weights in the conv rule's panels when
groups=1) that the CPU conv rule schedules, requantization fused.

``quantized_matmul`` (two int8 activations, per-tensor requantization): on
AVX2 both operands are widened per call (``b`` into the GEMM's ``[N/8, K/2,
8, 2]`` panels, one set per batch) and the vpmaddwd GEMM rule runs over the
flattened rows; otherwise a generic int32 batch matmul for the matmul rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from tvm import relax, te, tirx

from fxpress.backends.tvm.block_sparse import convert_block_sparse_linear
from fxpress.backends.tvm.kernels.int8_avx2 import has_avx2, u8s8_safe
from fxpress.backends.tvm.kernels.matmul import register_tile
from fxpress.backends.tvm.targets import TargetSpec
from fxpress.backends.tvm.te_conv import (
    te_conv_shift_u8,
    te_conv_widen,
    te_quantized_conv2d,
    te_quantized_conv2d_pmadd,
)
from fxpress.backends.tvm.te_dynamic import te_dynamic_linear, te_dynamic_linear_generic, te_row_params, te_row_quantize
from fxpress.backends.tvm.te_gemm import (
    te_pack_activation,
    te_quantized_linear,
    te_quantized_linear_pmadd,
    te_quantized_matmul,
    te_quantized_matmul_pmadd,
    te_shift_u8,
    te_widen,
    te_widen_rows,
)
from fxpress.backends.tvm.te_pool import te_max_pool2d_nhwc, te_max_pool2d_separable
from fxpress.backends.tvm.te_requant import te_dequantize, te_quantize
from fxpress.backends.tvm.te_softmax import te_softmax_quantize

Converter = Callable[[Any, Any], relax.Expr]

U8S8 = True  # take the vpmaddubsw kernels where the weights allow (tests switch it off to cover vpmaddwd)


def _bias_panels(bb: Any, bias: relax.Expr) -> relax.Expr:
    """int32 ``[N/8, 8]`` (zero-padded) bias, laid out like the accumulators of a narrow kernel."""
    bias32 = bb.emit(relax.op.astype(bias, "int32"))
    return bb.emit(relax.op.layout_transform(bias32, lambda j: (j // 8, j % 8), pad_value=0))


def _pack_linear(bb: Any, w: relax.Expr, v: int) -> relax.Expr:
    """Weights ``[N, K]`` as the AVX2 GEMM's panels ``[N/8, K/V, 8, V]``: int8 for u8s8 (V=4), int16 for s16 (V=2).

    Computed from weights alone, so ``LiftTransformParams`` runs it once, at compile time.
    """
    packed = bb.emit(relax.op.layout_transform(w, lambda o, i: (o // 8, i // v, o % 8, i % v), pad_value=0))
    return packed if v == 4 else bb.emit(relax.op.astype(packed, "int16"))


def _pack_conv(bb: Any, w: relax.Expr, v: int) -> relax.Expr:
    """OIHW weights as the AVX2 direct conv's ``[O/8, KH, KW, C/V, 8, V]`` (int8 for V=4, int16 for V=2)."""
    layout = lambda o, i, h, k: (o // 8, h, k, i // v, o % 8, i % v)  # noqa: E731
    packed = bb.emit(relax.op.layout_transform(w, layout, pad_value=0))
    return packed if v == 4 else bb.emit(relax.op.astype(packed, "int16"))


def _u8s8_bias(bb: Any, w: relax.Expr, bias: relax.Expr, x_zero_point: int, narrow: bool) -> relax.Expr:
    """``bias - (128 + x_zp) * colsum(w)``: undoes the u8s8 kernels' ``x + 128`` (weights only: lifted).

    int64, or int32 when `narrow` (the converter proved it fits).
    """
    axes = list(range(1, len(w.ty.shape.values)))
    colsum = bb.emit(relax.op.sum(relax.op.astype(w, "int64"), axis=axes))
    offset = relax.const(128 + x_zero_point, "int64")
    shifted = bb.emit(relax.op.subtract(relax.op.astype(bias, "int64"), relax.op.multiply(colsum, offset)))
    return bb.emit(relax.op.astype(shifted, "int32")) if narrow else shifted


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


def _is_to_nhwc(expr: relax.Expr | None) -> bool:
    """`expr` is ``permute_dims(x, [0, 2, 3, 1])`` (NCHW to NHWC)."""
    return _is_call(expr, "relax.permute_dims") and [int(a) for a in expr.attrs.axes] == [0, 2, 3, 1]


def converters(spec: TargetSpec, constants: Mapping[str, torch.Tensor] | None = None) -> dict[str, Converter]:
    """The custom_convert_map for `spec` (panel widths depend on the target).

    `constants` maps the exported program's placeholder names to their values
    (weights); with them, int8 layers whose weights cannot saturate it take the
    u8s8 kernels on AVX2.
    """
    panel = 16
    pmadd = False
    if spec.device == "cpu":
        _, nr, lanes = register_tile(spec.target)
        panel = nr * lanes
        pmadd = has_avx2(spec.target)

    def u8s8(node: Any, weight_arg: int = 2) -> bool:
        """`node`'s int8 weight (``args[weight_arg]``) is known and safe for vpmaddubsw."""
        arg = node.args[weight_arg]
        value = constants.get(arg.name) if constants and hasattr(arg, "name") else None
        return pmadd and U8S8 and value is not None and u8s8_safe(value)

    def narrow(node: Any, shifts: bool = True) -> bool:
        """`node`'s requantization may run in int32 (see `requantize`): proven on its constant operands.

        `shifts` False (a float-out op): only that ``acc + bias`` fits int32.
        """
        names = [getattr(node.args[i], "name", None) for i in ((2, 3, 5) if shifts else (2, 3))]
        values = [constants.get(n) if constants and n else None for n in names]
        if not pmadd or any(v is None for v in values):
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
        return _linear(importer, x, x_zp, w, bias, (multiplier, shift, out_zp), None, u8s8(node), narrow(node))

    def quantized_linear_float(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, scale = importer.retrieve_args(node)
        return _linear(importer, x, x_zp, w, bias, (None, None, 0), scale, u8s8(node), narrow(node, shifts=False))

    def _linear(
        importer: Any, x: Any, x_zp: Any, w: Any, bias: Any, requant: tuple, scale: Any, fast: bool, narrow32: bool
    ) -> relax.Expr:
        """Both linear ops: requantized by `requant` (multiplier, shift, out_zp), or float32 times `scale`."""
        bb = importer.block_builder
        n = int(w.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        if len(lead) > 1:  # rows flattened, so the GEMM rules see one row loop (they fuse none)
            x2 = bb.emit(relax.op.reshape(x, (-1, k)))
            y = quantized_linear_2d(bb, x2, x_zp, w, bias, *requant, fast, narrow32, scale)
            return bb.emit(relax.op.reshape(y, (*lead, n)))
        return quantized_linear_2d(bb, x, x_zp, w, bias, *requant, fast, narrow32, scale)

    def quantized_linear_2d(
        bb: Any,
        x: relax.Expr,
        x_zp: Any,
        w: relax.Expr,
        bias: Any,
        multiplier: Any,
        shift: Any,
        out_zp: Any,
        fast: bool,
        narrow32: bool,
        scale: Any = None,
    ) -> relax.Expr:
        n = int(w.ty.shape.values[0])
        if pmadd:
            v, kdim = (4 if fast else 2), int(w.ty.shape.values[1])
            b = _pack_linear(bb, w, v)
            if fast:
                a = bb.emit(bb.call_te(te_shift_u8, x, (kdim + 3) // 4, primfunc_name_hint="shift_u8"))
                bias = _u8s8_bias(bb, w, bias, int(x_zp), narrow32)
            else:
                a = bb.emit(bb.call_te(te_widen, x, int(x_zp), (kdim + 1) // 2, primfunc_name_hint="widen"))
            bias = _bias_panels(bb, bias) if narrow32 else bias
            args = (a, b, bias, multiplier, shift, int(out_zp), n, narrow32, scale)
            return bb.emit(bb.call_te(te_quantized_linear_pmadd, *args, primfunc_name_hint="quantized_linear"))
        wp = bb.emit(relax.op.layout_transform(w, lambda o, i: (o // panel, i, o % panel), pad_value=0))
        return bb.emit(
            bb.call_te(
                te_quantized_linear,
                x,
                wp,
                bias,
                multiplier,
                shift,
                int(x_zp),
                int(out_zp),
                n,
                scale,
                primfunc_name_hint="quantized_linear",
            )
        )

    def quantized_conv2d(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp, *attrs = importer.retrieve_args(node)
        return _conv(importer, x, x_zp, w, bias, (multiplier, shift, int(out_zp)), None, attrs, node, narrow(node))

    def quantized_conv2d_float(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, scale, *attrs = importer.retrieve_args(node)
        return _conv(importer, x, x_zp, w, bias, (None, None, 0), scale, attrs, node, narrow(node, shifts=False))

    def quantized_conv2d_nhwc(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp, *attrs = importer.retrieve_args(node)
        requant = (multiplier, shift, int(out_zp))
        return _conv(importer, x, x_zp, w, bias, requant, None, attrs, node, narrow(node), channels_last=True)

    def quantized_conv2d_float_nhwc(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, scale, *attrs = importer.retrieve_args(node)
        n32 = narrow(node, shifts=False)
        return _conv(importer, x, x_zp, w, bias, (None, None, 0), scale, attrs, node, n32, channels_last=True)

    def _conv(
        importer: Any,
        x: Any,
        x_zp: Any,
        w: Any,
        bias: Any,
        requant: tuple,
        scale: Any,
        conv: list,
        node: Any,
        n32: bool,
        channels_last: bool = False,
    ) -> relax.Expr:
        """All conv ops: requantized by `requant` (multiplier, shift, out_zp), or float32 times `scale`.

        `channels_last`: NHWC in and out (layout_ops.py), native to the AVX2
        direct conv; any other kernel runs in NCHW between two transposes.
        """
        stride, padding, dilation, groups = conv
        bb = importer.block_builder
        attrs = (tuple(stride), tuple(padding), tuple(dilation), (int(groups),))
        out_channels = int(w.ty.shape.values[0])
        if pmadd and groups == 1:
            fast = u8s8(node)
            b = _pack_conv(bb, w, 4 if fast else 2)
            source, reads_nhwc = x, channels_last
            bound = bb.lookup_binding(x) if channels_last and isinstance(x, relax.Var) else None
            if _is_to_nhwc(bound):
                # an NCHW tensor (the stem's input) made NHWC only for this conv: the prologue packs it directly,
                # and stage dead-code drops the transpose
                source, reads_nhwc = bound.args[0], False
            prologue = (source, int(x_zp), tuple(padding), reads_nhwc)
            if fast:
                pad = bb.call_te(te_conv_shift_u8, *prologue, primfunc_name_hint="conv_shift_u8")
                bias = _u8s8_bias(bb, w, bias, int(x_zp), n32)
            else:
                pad = bb.call_te(te_conv_widen, *prologue, primfunc_name_hint="conv_widen")
            bias = _bias_panels(bb, bias) if n32 else bias
            args = (bb.emit(pad), b, bias, *requant, attrs, out_channels, n32, scale, channels_last)
            return bb.emit(bb.call_te(te_quantized_conv2d_pmadd, *args, primfunc_name_hint="quantized_conv2d"))
        if channels_last:
            x_nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
            out = _conv(importer, x_nchw, x_zp, w, bias, requant, scale, conv, node, n32)
            return bb.emit(relax.op.permute_dims(out, [0, 2, 3, 1]))
        if groups == 1 and spec.device == "cpu":  # panels: the conv rule vectorizes over output channels
            w = bb.emit(relax.op.layout_transform(w, lambda o, i, h, k: (o // panel, i, h, k, o % panel), pad_value=0))
        multiplier, shift, out_zp = requant
        args = (x, w, bias, multiplier, shift, int(x_zp), out_zp, attrs, out_channels, scale)
        return bb.emit(bb.call_te(te_quantized_conv2d, *args, primfunc_name_hint="quantized_conv2d"))

    def quantized_matmul(node: Any, importer: Any) -> relax.Expr:
        a, a_zp, b, b_zp, multiplier, shift, out_zp = importer.retrieve_args(node)
        return _matmul(importer, a, a_zp, b, b_zp, (int(multiplier), int(shift), int(out_zp)), None)

    def quantized_matmul_float(node: Any, importer: Any) -> relax.Expr:
        a, a_zp, b, b_zp, scale = importer.retrieve_args(node)
        return _matmul(importer, a, a_zp, b, b_zp, (0, 0, 0), float(scale))

    def _matmul(importer: Any, a: Any, a_zp: Any, b: Any, b_zp: Any, scalars: tuple, scale: float | None) -> Any:
        """Both matmul ops: requantized by `scalars` (multiplier, shift, out_zp), or float32 times `scale`."""
        bb = importer.block_builder
        shift = scalars[1]
        same_batch = [str(d) for d in a.ty.shape.values[:-2]] == [str(d) for d in b.ty.shape.values[:-2]]
        static = all(isinstance(d, tirx.IntImm) for d in (a.ty.shape.values[-1], b.ty.shape.values[-1]))
        if pmadd and same_batch and static:
            *batch, m, kdim = a.ty.shape.values
            k2, n = (int(kdim) + 1) // 2, int(b.ty.shape.values[-1])
            a16 = bb.emit(bb.call_te(te_widen_rows, a, int(a_zp), k2, primfunc_name_hint="widen"))
            b16 = bb.emit(bb.call_te(te_pack_activation, b, int(b_zp), k2, primfunc_name_hint="pack_activation"))
            narrow32 = int(shift) >= 1 and 2 * 255 * 255 * int(kdim) < (1 << 31)
            if all(isinstance(d, tirx.IntImm) for d in batch):  # output N-D: the scaling and mask fuse in
                args = (a16, b16, *scalars, list(batch), m, n, narrow32, scale)
                return bb.emit(bb.call_te(te_quantized_matmul_pmadd, *args, primfunc_name_hint="quantized_matmul"))
            # A symbolic batch: rows out, then a reshape. (Fused with a broadcast epilogue, such a
            # function with symbolic rows went to the fp32 conv rule, which computed it wrong.)
            args = (a16, b16, *scalars, None, m, n, narrow32, scale)
            flat = bb.emit(bb.call_te(te_quantized_matmul_pmadd, *args, primfunc_name_hint="quantized_matmul"))
            return bb.emit(relax.op.reshape(flat, [*batch, m, n]))
        args = (a, b, int(a_zp), int(b_zp), *scalars, scale)
        return bb.emit(bb.call_te(te_quantized_matmul, *args, primfunc_name_hint="quantized_matmul"))

    def dynamic_quantized_linear(node: Any, importer: Any) -> relax.Expr:
        x, w, weight_scale, bias = importer.retrieve_args(node)
        bb = importer.block_builder
        n = int(w.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        x2 = bb.emit(relax.op.reshape(x, (-1, k))) if len(lead) != 1 else x
        params = bb.emit(bb.call_te(te_row_params, x2, primfunc_name_hint="row_params"))
        fast = u8s8(node, weight_arg=1)
        if pmadd:
            v = 4 if fast else 2
            b = _pack_linear(bb, w, v)
            a = bb.emit(bb.call_te(te_row_quantize, x2, params, v, fast, primfunc_name_hint="row_quantize"))
            colsum = bb.emit(relax.op.sum(relax.op.astype(w, "int32"), axis=[1])) if fast else None
            args = (a, b, params, colsum, weight_scale, bias, n)
            y = bb.emit(bb.call_te(te_dynamic_linear, *args, primfunc_name_hint="dynamic_quantized_linear"))
        else:
            a = bb.emit(bb.call_te(te_row_quantize, x2, params, 1, False, primfunc_name_hint="row_quantize"))
            args = (a, w, weight_scale, bias, params)
            y = bb.emit(bb.call_te(te_dynamic_linear_generic, *args, primfunc_name_hint="dynamic_quantized_linear"))
        return bb.emit(relax.op.reshape(y, (*lead, n))) if len(lead) != 1 else y

    table = {
        "dynamic_quantized_linear.default": dynamic_quantized_linear,
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
    }
    if spec.device == "cpu":
        table["max_pool2d.default"] = max_pool2d
        table["max_pool2d_with_indices.default"] = max_pool2d_with_indices
    return table


OPAQUE = 8  # relax's OpPatternKind kOpaque: FuseOps leaves the function alone


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
