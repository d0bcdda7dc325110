"""The AVX2 int8 lowering: operands laid out for the ``vpmaddubsw`` / ``vpmaddwd`` micro-kernels.

Two exact forms per layer (kernels/int8_avx2.py explains the kernels):

- **u8s8**: activations shifted to uint8 (``x + 128``) in groups of V=4,
  int8 weight panels ``[N/8, K/4, 8, 4]``, the shift undone through the bias
  (``bias - (128 + x_zp) * colsum(w)``, computed from weights alone, so
  lifted to compile time). Taken when the layer's weights cannot saturate
  ``vpmaddubsw`` (`saturates` is False for them).
- **s16**: ``x - x_zp`` widened to int16 in pairs, int16 weight panels
  ``[N/8, K/2, 8, 2]``; any weights.

groups=1 convs become a direct NHWC-group convolution (kernels/
int8_conv_avx2.py) with weights ``[O/8, KH, KW, C/V, 8, V]``; depthwise and
grouped convs take the generic form. Batched matmuls (attention) widen both
activations per call. A subclass (the VNNI ISA) changes the lane width and
which weights may take the u8s8 form.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, tirx

from fxpress.backends.tvm.isa.base import Conv, Int8Weight, Requant
from fxpress.backends.tvm.isa.generic import GenericInt8
from fxpress.backends.tvm.kernels.int8_avx2 import u8s8_safe
from fxpress.backends.tvm.te_conv import te_conv_shift_u8, te_conv_widen, te_quantized_conv2d_pmadd
from fxpress.backends.tvm.te_dynamic import te_dynamic_linear, te_row_params, te_row_quantize
from fxpress.backends.tvm.te_gemm import (
    te_pack_activation,
    te_quantized_linear_pmadd,
    te_quantized_matmul_pmadd,
    te_shift_u8,
    te_widen,
    te_widen_rows,
)

LANES = 8  # int32 lanes of a ymm accumulator: the panel width of every AVX2 int8 layout


def bias_panels(bb: Any, bias: relax.Expr, lanes: int = LANES) -> relax.Expr:
    """int32 ``[N/L, L]`` (zero-padded) bias, laid out like the accumulators of a narrow kernel."""
    bias32 = bb.emit(relax.op.astype(bias, "int32"))
    return bb.emit(relax.op.layout_transform(bias32, lambda j: (j // lanes, j % lanes), pad_value=0))


def pack_linear(bb: Any, w: relax.Expr, v: int, lanes: int = LANES) -> relax.Expr:
    """Weights ``[N, K]`` as panels ``[N/L, K/V, L, V]``: int8 for u8s8 (V=4), int16 for s16 (V=2). Lifted."""
    layout = lambda o, i: (o // lanes, i // v, o % lanes, i % v)  # noqa: E731
    packed = bb.emit(relax.op.layout_transform(w, layout, pad_value=0))
    return packed if v == 4 else bb.emit(relax.op.astype(packed, "int16"))


def pack_conv(bb: Any, w: relax.Expr, v: int, lanes: int = LANES) -> relax.Expr:
    """OIHW weights as the direct conv's ``[O/L, KH, KW, C/V, L, V]`` (int8 for V=4, int16 for V=2). Lifted."""
    layout = lambda o, i, h, k: (o // lanes, h, k, i // v, o % lanes, i % v)  # noqa: E731
    packed = bb.emit(relax.op.layout_transform(w, layout, pad_value=0))
    return packed if v == 4 else bb.emit(relax.op.astype(packed, "int16"))


def u8s8_bias(bb: Any, w: relax.Expr, bias: relax.Expr, x_zero_point: int, narrow: bool) -> relax.Expr:
    """``bias - (128 + x_zp) * colsum(w)``: undoes the u8s8 kernels' ``x + 128`` (weights only: lifted).

    int64, or int32 when `narrow` (the converter proved it fits).
    """
    axes = list(range(1, len(w.ty.shape.values)))
    colsum = bb.emit(relax.op.sum(relax.op.astype(w, "int64"), axis=axes))
    offset = relax.const(128 + x_zero_point, "int64")
    shifted = bb.emit(relax.op.subtract(relax.op.astype(bias, "int64"), relax.op.multiply(colsum, offset)))
    return bb.emit(relax.op.astype(shifted, "int32")) if narrow else shifted


def is_to_nhwc(expr: relax.Expr | None) -> bool:
    """`expr` is ``permute_dims(x, [0, 2, 3, 1])`` (NCHW to NHWC)."""
    return (
        isinstance(expr, relax.Call)
        and getattr(expr.op, "name", "") == "relax.permute_dims"
        and [int(a) for a in expr.attrs.axes] == [0, 2, 3, 1]
    )


def conv_source(bb: Any, x: relax.Expr, conv: Conv) -> tuple[relax.Expr, bool]:
    """(the tensor a conv prologue reads, whether it is NHWC): an NCHW tensor made NHWC only for this conv
    (the stem's input) is read directly, and stage dead-code drops the transpose."""
    bound = bb.lookup_binding(x) if conv.channels_last and isinstance(x, relax.Var) else None
    return (bound.args[0], False) if is_to_nhwc(bound) else (x, conv.channels_last)


class Avx2Int8(GenericInt8):
    """The u8s8 / s16 forms of the module doc; depthwise and grouped convs stay generic."""

    lanes = LANES

    def __init__(self, panel: int, u8s8: bool = True) -> None:
        super().__init__(panel)
        self.u8s8 = u8s8

    def fast(self, w: Int8Weight) -> bool:
        """Whether the layer of weight `w` takes the u8s8 form (only known constant weights that cannot saturate)."""
        return self.u8s8 and w.value is not None and u8s8_safe(w.value)

    def linear(self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant) -> relax.Expr:
        n, kdim = (int(d) for d in w.expr.ty.shape.values)
        fast = self.fast(w)
        b = pack_linear(bb, w.expr, 4 if fast else 2, self.lanes)
        if fast:
            a = bb.emit(bb.call_te(te_shift_u8, x, (kdim + 3) // 4, primfunc_name_hint="shift_u8"))
            bias = u8s8_bias(bb, w.expr, bias, int(x_zp), rq.narrow)
        else:
            a = bb.emit(bb.call_te(te_widen, x, int(x_zp), (kdim + 1) // 2, primfunc_name_hint="widen"))
        bias = bias_panels(bb, bias, self.lanes) if rq.narrow else bias
        args = (a, b, bias, rq.multiplier, rq.shift, int(rq.out_zero_point), n, rq.narrow, rq.scale)
        return bb.emit(bb.call_te(te_quantized_linear_pmadd, *args, primfunc_name_hint="quantized_linear"))

    def conv2d(
        self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant, conv: Conv
    ) -> relax.Expr:
        if conv.groups != 1:
            return super().conv2d(bb, x, x_zp, w, bias, rq, conv)
        fast = self.fast(w)
        b = pack_conv(bb, w.expr, 4 if fast else 2, self.lanes)
        source, reads_nhwc = conv_source(bb, x, conv)
        prologue = (source, int(x_zp), tuple(conv.attrs[1]), reads_nhwc)
        if fast:
            pad = bb.call_te(te_conv_shift_u8, *prologue, primfunc_name_hint="conv_shift_u8")
            bias = u8s8_bias(bb, w.expr, bias, int(x_zp), rq.narrow)
        else:
            pad = bb.call_te(te_conv_widen, *prologue, primfunc_name_hint="conv_widen")
        bias = bias_panels(bb, bias, self.lanes) if rq.narrow else bias
        out_channels = int(w.expr.ty.shape.values[0])
        requant = (rq.multiplier, rq.shift, int(rq.out_zero_point))
        args = (bb.emit(pad), b, bias, *requant, conv.attrs, out_channels, rq.narrow, rq.scale, conv.channels_last)
        return bb.emit(bb.call_te(te_quantized_conv2d_pmadd, *args, primfunc_name_hint="quantized_conv2d"))

    def matmul(
        self, bb: Any, a: relax.Expr, a_zp: int, b: relax.Expr, b_zp: int, scalars: tuple[int, int, int], scale: Any
    ) -> relax.Expr:
        same_batch = [str(d) for d in a.ty.shape.values[:-2]] == [str(d) for d in b.ty.shape.values[:-2]]
        static = all(isinstance(d, tirx.IntImm) for d in (a.ty.shape.values[-1], b.ty.shape.values[-1]))
        if not (same_batch and static):
            return super().matmul(bb, a, a_zp, b, b_zp, scalars, scale)
        *batch, m, kdim = a.ty.shape.values
        k2, n = (int(kdim) + 1) // 2, int(b.ty.shape.values[-1])
        a16 = bb.emit(bb.call_te(te_widen_rows, a, int(a_zp), k2, primfunc_name_hint="widen"))
        b16 = bb.emit(bb.call_te(te_pack_activation, b, int(b_zp), k2, primfunc_name_hint="pack_activation"))
        narrow32 = int(scalars[1]) >= 1 and 2 * 255 * 255 * int(kdim) < (1 << 31)
        if all(isinstance(d, tirx.IntImm) for d in batch):  # output N-D: the scaling and mask fuse in
            args = (a16, b16, *scalars, list(batch), m, n, narrow32, scale)
            return bb.emit(bb.call_te(te_quantized_matmul_pmadd, *args, primfunc_name_hint="quantized_matmul"))
        # A symbolic batch: rows out, then a reshape. (Fused with a broadcast epilogue, such a
        # function with symbolic rows went to the fp32 conv rule, which computed it wrong.)
        args = (a16, b16, *scalars, None, m, n, narrow32, scale)
        flat = bb.emit(bb.call_te(te_quantized_matmul_pmadd, *args, primfunc_name_hint="quantized_matmul"))
        return bb.emit(relax.op.reshape(flat, [*batch, m, n]))

    def dynamic_linear(self, bb: Any, x2: relax.Expr, w: Int8Weight, weight_scale: Any, bias: Any) -> relax.Expr:
        n = int(w.expr.ty.shape.values[0])
        params = bb.emit(bb.call_te(te_row_params, x2, primfunc_name_hint="row_params"))
        fast = self.fast(w)
        v = 4 if fast else 2
        b = pack_linear(bb, w.expr, v, self.lanes)
        a = bb.emit(bb.call_te(te_row_quantize, x2, params, v, fast, primfunc_name_hint="row_quantize"))
        colsum = bb.emit(relax.op.sum(relax.op.astype(w.expr, "int32"), axis=[1])) if fast else None
        args = (a, b, params, colsum, weight_scale, bias, n)
        return bb.emit(bb.call_te(te_dynamic_linear, *args, primfunc_name_hint="dynamic_quantized_linear"))
