"""The AMX int8 lowering: ``tdpbusd`` tile GEMMs for linears and convs, VNNI for the rest.

A layer takes the AMX GEMM (gemm.py, a hand-written PrimFunc called with
``call_tir``) when its shapes are static and it has enough work to fill the
tiles (`worth_amx`); otherwise the VNNI lowering it subclasses takes it
(dynamic row counts, tiny layers, depthwise and grouped convs, batched
activation matmuls).

- **linear**: rows shifted to uint8 (``x + 128``, K padded to 4), weights
  packed ``[N/32, K/4, 32, 4]`` at compile time, the shift undone through
  the bias (``(128 + x_zp) * colsum(w)``, lifted), the requantization (or
  float scaling) one fused element-wise kernel over the GEMM's int32 output.
- **dynamic linear**: rows quantized to uint8 at run time (te_dynamic.py),
  the same GEMM, the per-row/per-column float dequantization fused after it.
- **conv** (groups = 1, at least 16 input channels): the uint8 im2col
  matrix ``[M, KH, KW, Cp]`` gathered from the padded image (te_amx.py),
  weights ``[O, KH, KW, Cp]``
  flattened and packed like a linear's, the int32 ``[M, O]`` output read as
  NHWC (or NCHW) by the requantizing epilogue.

Every form is exact integer arithmetic, bit-identical to the reference ops.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, tirx

from fxpress.backends.tvm.isa.base import Conv, Int8Weight, Requant
from fxpress.backends.tvm.isa.x86_amx.gemm import amx_gemm
from fxpress.backends.tvm.isa.x86_amx.layout import GROUP, weight_index_map
from fxpress.backends.tvm.isa.x86_amx.te_amx import te_dynamic_dequantize, te_gemm_requant, te_im2col_u8
from fxpress.backends.tvm.isa.x86_avx2.int8 import conv_source, u8s8_bias
from fxpress.backends.tvm.isa.x86_vnni.int8 import VnniInt8
from fxpress.backends.tvm.te_conv import _conv_out, te_conv_shift_u8
from fxpress.backends.tvm.te_dynamic import te_row_params, te_row_quantize
from fxpress.backends.tvm.te_gemm import te_shift_u8

# Below this many multiply-adds, or this depth, the tile set-up outweighs the tiles: VNNI takes the layer.
MIN_MACS = 1 << 18
MIN_K = 16
# Convs with fewer input channels (an RGB stem) gather too few bytes per im2col copy: the VNNI direct conv is faster.
MIN_CHANNELS = 16
OPAQUE = 8  # relax's OpPatternKind kOpaque: FuseOps leaves the hand-written GEMM alone


def worth_amx(m: Any, n: int, k: int) -> bool:
    """A static GEMM with enough work and depth for AMX tiles."""
    return isinstance(m, int) and k >= MIN_K and m * n * k >= MIN_MACS


def _static(value: Any) -> int | None:
    return int(value.value) if isinstance(value, tirx.IntImm) else None


def _round4(k: int) -> int:
    return -(-k // GROUP) * GROUP


class AmxInt8(VnniInt8):
    """AMX tiles for big static linears and groups=1 convs; VNNI (`VnniInt8`) for every other layer."""

    # int8 block-sparse linears run VNNI's kernel, whose rival here is the AMX GEMM: measured even with it
    # at a padded column density of 0.26 (Linear(768, 3072), batch 128, 1 thread; bench/sparsity.md)
    sparse_max_density = 0.2

    def __init__(self, panel: int, threads: int, u8s8: bool = True) -> None:
        super().__init__(panel, u8s8=u8s8)
        self.threads = threads

    def _gemm(self, bb: Any, a: relax.Expr, w2: relax.Expr, m: int, n: int, k: int) -> relax.Expr:
        """``C[m, n]`` int32 = ``a[m, k]`` (uint8) x ``w2[n, k]``^T through the AMX GEMM; `w2` is packed here (lifted)."""
        wp = bb.emit(relax.op.layout_transform(w2, weight_index_map, pad_value=0))
        # the default symbol names shape and threads: equal symbols are equal functions (BlockBuilder keeps one),
        # and the same model gives the same artifact (a process-wide counter made symbols differ per compile)
        func = amx_gemm(m, n, k, threads=self.threads)
        gv = bb.add_func(func.with_attr("tir.is_scheduled", True).with_attr("op_pattern", OPAQUE), "amx_gemm")
        return bb.emit(relax.call_tir(gv, [a, wp], relax.TensorType((m, n), "int32")))

    def linear(self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant) -> relax.Expr:
        m = _static(x.ty.shape.values[0])
        n, kdim = (int(d) for d in w.expr.ty.shape.values)
        if not self.u8s8 or not worth_amx(m, n, kdim):
            return super().linear(bb, x, x_zp, w, bias, rq)
        kp = _round4(kdim)
        shifted = bb.emit(bb.call_te(te_shift_u8, x, kp // GROUP, primfunc_name_hint="shift_u8"))
        a = bb.emit(relax.op.reshape(shifted, (m, kp)))
        c = self._gemm(bb, a, w.expr, int(m), n, kp)
        bias = u8s8_bias(bb, w.expr, bias, int(x_zp), rq.narrow)
        args = (c, bias, rq.multiplier, rq.shift, int(rq.out_zero_point), rq.narrow, rq.scale)
        return bb.emit(bb.call_te(te_gemm_requant, *args, primfunc_name_hint="amx_requant"))

    def dynamic_linear(self, bb: Any, x2: relax.Expr, w: Int8Weight, weight_scale: Any, bias: Any) -> relax.Expr:
        m = _static(x2.ty.shape.values[0])
        n, kdim = (int(d) for d in w.expr.ty.shape.values)
        if not self.u8s8 or not worth_amx(m, n, kdim):
            return super().dynamic_linear(bb, x2, w, weight_scale, bias)
        kp = _round4(kdim)
        params = bb.emit(bb.call_te(te_row_params, x2, primfunc_name_hint="row_params"))
        rows = bb.emit(bb.call_te(te_row_quantize, x2, params, GROUP, True, primfunc_name_hint="row_quantize"))
        c = self._gemm(bb, bb.emit(relax.op.reshape(rows, (m, kp))), w.expr, int(m), n, kp)
        colsum = bb.emit(relax.op.sum(relax.op.astype(w.expr, "int32"), axis=[1]))
        args = (c, params, colsum, weight_scale, bias)
        return bb.emit(bb.call_te(te_dynamic_dequantize, *args, primfunc_name_hint="dynamic_dequantize"))

    def conv2d(
        self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant, conv: Conv
    ) -> relax.Expr:
        shape = [_static(d) for d in x.ty.shape.values]
        out_channels, cin, kh, kw = (int(d) for d in w.expr.ty.shape.values)
        if not self.u8s8 or conv.groups != 1 or None in shape:
            return super().conv2d(bb, x, x_zp, w, bias, rq, conv)
        batch, h, wd = (shape[0], shape[1], shape[2]) if conv.channels_last else (shape[0], shape[2], shape[3])
        (sh, sw), (top, left, bottom, right), (dh, dw), _ = conv.attrs
        oh, ow = _conv_out(h, top, bottom, kh, sh, dh), _conv_out(wd, left, right, kw, sw, dw)
        cp = _round4(cin)
        m, kdim = batch * oh * ow, kh * kw * cp
        if cp < MIN_CHANNELS or not worth_amx(m, out_channels, kdim):
            return super().conv2d(bb, x, x_zp, w, bias, rq, conv)
        source, reads_nhwc = conv_source(bb, x, conv)
        padded = (source, int(x_zp), tuple(conv.attrs[1]), reads_nhwc)
        image = bb.emit(bb.call_te(te_conv_shift_u8, *padded, primfunc_name_hint="conv_shift_u8"))
        call = bb.call_te(te_im2col_u8, image, conv.attrs, (kh, kw), primfunc_name_hint="im2col_u8")
        bb.update_func(call.args[0], bb.get()[call.args[0]].with_attr("op_pattern", OPAQUE))  # see te_amx.py
        a = bb.emit(relax.op.reshape(bb.emit(call), (m, kdim)))
        w4 = bb.emit(relax.op.permute_dims(w.expr, [0, 2, 3, 1]))  # [O, KH, KW, C]: the im2col column order
        if cp != cin:
            w4 = bb.emit(relax.op.nn.pad(w4, [0, 0, 0, 0, 0, 0, 0, cp - cin], pad_value=0.0))
        c = self._gemm(bb, a, bb.emit(relax.op.reshape(w4, (out_channels, kdim))), m, out_channels, kdim)
        bias = u8s8_bias(bb, w.expr, bias, int(x_zp), rq.narrow)
        out = (batch, oh, ow)
        args = (
            c,
            bias,
            rq.multiplier,
            rq.shift,
            int(rq.out_zero_point),
            rq.narrow,
            rq.scale,
            out,
            not conv.channels_last,
        )
        return bb.emit(bb.call_te(te_gemm_requant, *args, primfunc_name_hint="amx_requant"))
