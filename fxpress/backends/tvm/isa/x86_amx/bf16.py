"""The AMX-BF16 lowering of ``bf16_linear`` and ``bf16_conv2d``: ``tdpbf16ps`` tile GEMMs, float32 accumulation.

A static linear with enough work (`worth_amx`, as for int8) runs as

    A = bf16_bits(x) [M, Kp]            # rounded to nearest even, K padded to even with zeros
    Wp = pack(bf16_bits(W)) [N/32, Kp/2, 32, 2]   # lifted: runs once at compile time, stored as bf16 bits
    C = amx_gemm(A, Wp) [M, N] float32  # gemm.py with bf16=True
    y = C + bias                        # one fused element-wise kernel

A conv (groups 1, static shapes, at least 16 input channels) is the same
GEMM over its im2col matrix: the NCHW image as NHWC bf16 bits, padded with
zeros (te_bf16.py), each output pixel's window one row ``[KH, KW, Cp]``, the
weight permuted to ``[O, KH, KW, Cp]`` and packed like a linear's, the
float32 ``[M, O]`` result read back as NCHW with the bias added.

Anything else (a dynamic row count, a tiny layer, a grouped conv) takes the default
`Bf16Lowering` (a float32 GEMM over the rounded values). Both compute the
reference's products exactly; the float32 sums differ in order only. The
stored weight is half the bytes of a float32 one.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx

from fxpress.backends.tvm.isa.base import Bf16Lowering, ConvAttrs
from fxpress.backends.tvm.isa.x86_amx.gemm import amx_gemm
from fxpress.backends.tvm.isa.x86_amx.int8 import MIN_CHANNELS, OPAQUE, worth_amx
from fxpress.backends.tvm.isa.x86_amx.layout import BF16_GROUP, bf16_weight_index_map
from fxpress.backends.tvm.te_bf16 import te_bf16_bits, te_bf16_im2col, te_bf16_image, te_gemm_nchw_bias
from fxpress.backends.tvm.te_conv import _conv_out


def _bias_add(c: te.Tensor, bias: te.Tensor) -> te.Tensor:
    return te.compute(c.shape, lambda i, j: c[i, j] + bias[j], name="bf16_bias")


def _round2(k: int) -> int:
    return -(-k // BF16_GROUP) * BF16_GROUP


class AmxBf16(Bf16Lowering):
    """``tdpbf16ps`` tiles for big static linears and groups=1 convs; the float32 kernels (`Bf16Lowering`) for the rest."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def linear(self, bb: Any, x2: relax.Expr, weight: relax.Expr, bias: relax.Expr | None) -> relax.Expr:
        m_dim = x2.ty.shape.values[0]
        m = int(m_dim.value) if isinstance(m_dim, tirx.IntImm) else None
        n, k = (int(d) for d in weight.ty.shape.values)
        if m is None or not worth_amx(m, n, k):
            return super().linear(bb, x2, weight, bias)
        kp = _round2(k)
        a = bb.emit(bb.call_te(te_bf16_bits, x2, kp, primfunc_name_hint="bf16_bits"))
        c = self._gemm(bb, a, weight, m, n, kp)
        if bias is None:
            return c
        return bb.emit(bb.call_te(_bias_add, c, bias, primfunc_name_hint="bf16_bias"))

    def _gemm(self, bb: Any, a: relax.Expr, w2: relax.Expr, m: int, n: int, kp: int) -> relax.Expr:
        """``C[m, n]`` float32 = `a` (bf16 bits [m, kp]) x `w2` [n, k <= kp] rounded to bf16; `w2` packed here (lifted)."""
        wb = bb.emit(bb.call_te(te_bf16_bits, w2, kp, primfunc_name_hint="bf16_bits"))
        wp = bb.emit(relax.op.layout_transform(wb, bf16_weight_index_map, pad_value=0))
        func = amx_gemm(m, n, kp, threads=self.threads, bf16=True)
        gv = bb.add_func(func.with_attr("tir.is_scheduled", True).with_attr("op_pattern", OPAQUE), "amx_gemm_bf16")
        return bb.emit(relax.call_tir(gv, [a, wp], relax.TensorType((m, n), "float32")))

    def conv2d(
        self, bb: Any, x: relax.Expr, weight: relax.Expr, bias: relax.Expr | None, attrs: ConvAttrs
    ) -> relax.Expr:
        shape = [int(d.value) if isinstance(d, tirx.IntImm) else None for d in x.ty.shape.values]
        out_channels, cin, kh, kw = (int(d) for d in weight.ty.shape.values)
        (sh, sw), padding, (dh, dw), (groups,) = attrs
        if groups != 1 or None in shape:
            return super().conv2d(bb, x, weight, bias, attrs)
        batch, _, h, wd = (int(d) for d in shape)  # type: ignore[arg-type]
        top, left, bottom, right = padding
        oh, ow = _conv_out(h, top, bottom, kh, sh, dh), _conv_out(wd, left, right, kw, sw, dw)
        cp = _round2(cin)
        m, kdim = batch * oh * ow, kh * kw * cp
        if cp < MIN_CHANNELS or not worth_amx(m, out_channels, kdim):
            return super().conv2d(bb, x, weight, bias, attrs)
        image = bb.emit(bb.call_te(te_bf16_image, x, tuple(padding), cp, primfunc_name_hint="bf16_image"))
        call = bb.call_te(te_bf16_im2col, image, attrs, (kh, kw), primfunc_name_hint="bf16_im2col")
        bb.update_func(call.args[0], bb.get()[call.args[0]].with_attr("op_pattern", OPAQUE))  # as int8's im2col
        a = bb.emit(relax.op.reshape(bb.emit(call), (m, kdim)))
        w4 = bb.emit(relax.op.permute_dims(weight, [0, 2, 3, 1]))  # [O, KH, KW, C]: the im2col column order
        if cp != cin:
            w4 = bb.emit(relax.op.nn.pad(w4, [0, 0, 0, 0, 0, 0, 0, cp - cin], pad_value=0.0))
        c = self._gemm(bb, a, bb.emit(relax.op.reshape(w4, (out_channels, kdim))), m, out_channels, kdim)
        args = (c, bias, (batch, oh, ow))
        return bb.emit(bb.call_te(te_gemm_nchw_bias, *args, primfunc_name_hint="bf16_conv_out"))
