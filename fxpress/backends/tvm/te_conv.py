"""TE builders of `quantized_conv2d`: the generic NCHW int32 convolution and the direct panel forms.

The direct forms lay out a padded NHWC input in channel pairs (int16 ``x -
x_zp``) or quads (uint8 ``x + 128``, padding ``x_zp + 128``) and weights as
``[O/L, KH, KW, C/V, L, V]`` for kernels/int8_conv_avx2.py (L = 8 lanes on
AVX2, 8 or 16 with VNNI, read from the weights' shape); the requantization
writes NCHW (or NHWC) int8 from each register tile.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from fxpress.backends.tvm.te_requant import add_bias_panels, requantize, requantize_nchw, te_scaled

PROLOGUES = ("conv_widen", "conv_shift_u8")  # block names of the NHWC-group prologues (kernels/conv_prologue.py)


def _conv_out(size: Any, before: int, after: int, kernel: int, stride: int, dilation: int) -> Any:
    return (size + before + after - (kernel - 1) * dilation - 1) // stride + 1


def te_quantized_conv2d(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    x_zero_point: int,
    out_zero_point: int,
    attrs: tuple[tuple[int, ...], ...],
    out_channels: int,
    scale: te.Tensor | None = None,
) -> te.Tensor:
    """Generic int32 NCHW conv: ``pad(x - x_zp, 0)`` as int16, int32 accumulation, requantize.

    With `scale` (float32 ``[O]``): float out, ``float32(acc + bias) * scale`` (quantized_conv2d_float).

    `w` is OIHW, or [O/P, I, KH, KW, P] panels (groups == 1): the shapes
    the CPU conv rule schedules (vectors over output channels for panels).
    """
    (sh, sw), (top, left, bottom, right), (dh, dw), (groups,) = attrs
    n, c, h, wd = x.shape
    kh, kw = int(w.shape[2]), int(w.shape[3])
    cg, og = int(w.shape[1]), out_channels // groups
    zero = tirx.const(0, "int16")

    def pad_body(b: tirx.Var, ci: tirx.Var, yy: tirx.Var, xx: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(yy >= top, yy < h + top, xx >= left, xx < wd + left)
        value = x[b, ci, yy - top, xx - left].astype("int16") - tirx.const(x_zero_point, "int16")
        return tirx.if_then_else(inside, value, zero)

    pad = te.compute((n, c, h + top + bottom, wd + left + right), pad_body, name="pad_temp")
    rc, ry, rx = (
        te.reduce_axis((0, cg), name="rc"),
        te.reduce_axis((0, kh), name="ry"),
        te.reduce_axis((0, kw), name="rx"),
    )
    if len(w.shape) == 5:
        panel = int(w.shape[4])
        weight = lambda f: w[f // panel, rc, ry, rx, f % panel]  # noqa: E731
    else:
        weight = lambda f: w[f, rc, ry, rx]  # noqa: E731

    def acc_body(b: tirx.Var, f: tirx.Var, yy: tirx.Var, xx: tirx.Var) -> tirx.PrimExpr:
        a = pad[b, f // og * cg + rc, yy * sh + ry * dh, xx * sw + rx * dw].astype("int32")
        return te.sum(a * weight(f).astype("int32"), axis=[rc, ry, rx])

    shape = (n, out_channels, _conv_out(h, top, bottom, kh, sh, dh), _conv_out(wd, left, right, kw, sw, dw))
    acc = te.compute(shape, acc_body, name="qconv_acc")
    if scale is not None:
        return te_scaled(shape, lambda b, f, yy, xx: _i64(acc[b, f, yy, xx]) + _i64(bias[f]), scale, axis=1)
    return requantize_nchw(acc, bias, multiplier, shift, out_zero_point, lambda b, f, yy, xx: acc[b, f, yy, xx])


def _i64(v: tirx.PrimExpr) -> tirx.PrimExpr:
    return v.astype("int64")


def _reader(x: te.Tensor, channels_last: bool) -> tuple[Any, Any, Any, Any, Any]:
    """(n, c, h, w, read(b, c, y, x)) of an NCHW or, with `channels_last`, NHWC activation."""
    if channels_last:
        n, h, wd, c = x.shape
        return n, c, h, wd, lambda b, ci, yy, xx: x[b, yy, xx, ci]
    n, c, h, wd = x.shape
    return n, c, h, wd, lambda b, ci, yy, xx: x[b, ci, yy, xx]


def te_conv_widen(x: te.Tensor, x_zero_point: int, padding: tuple[int, ...], channels_last: bool = False) -> te.Tensor:
    """P16[n, y, x, c/2, 2] = x - x_zp as int16, NHWC channel pairs, zero in the padding and past C.

    `x` is NCHW, or NHWC with `channels_last` (then each pixel's channels are one contiguous read).
    """
    n, c, h, wd, at = _reader(x, channels_last)
    top, left, bottom, right = padding
    c2 = (int(c) + 1) // 2

    def body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, cp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        ci = cp * 2 + j
        inside = tirx.all(yy >= top, yy < h + top, xx >= left, xx < wd + left, ci < c)
        read = at(b, tirx.min(ci, c - 1), yy - top, xx - left).astype("int16")
        return tirx.if_then_else(inside, read - tirx.const(x_zero_point, "int16"), tirx.const(0, "int16"))

    return te.compute((n, h + top + bottom, wd + left + right, c2, 2), body, name="conv_widen")


def te_conv_shift_u8(
    x: te.Tensor, x_zero_point: int, padding: tuple[int, ...], channels_last: bool = False
) -> te.Tensor:
    """P8[n, y, x, c/4, 4] = x + 128 as uint8, NHWC channel quads; x_zp + 128 in the padding, zero past C.

    `x` is NCHW, or NHWC with `channels_last`.
    """
    n, c, h, wd, at = _reader(x, channels_last)
    top, left, bottom, right = padding
    c4 = (int(c) + 3) // 4

    def body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, cp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        ci = cp * 4 + j
        inside = tirx.all(yy >= top, yy < h + top, xx >= left, xx < wd + left)
        read = at(b, tirx.min(ci, c - 1), yy - top, xx - left).astype("int16")
        value = tirx.if_then_else(inside, read, tirx.const(x_zero_point, "int16")) + tirx.const(128, "int16")
        return tirx.if_then_else(ci < c, value.astype("uint8"), tirx.const(0, "uint8"))

    return te.compute((n, h + top + bottom, wd + left + right, c4, 4), body, name="conv_shift_u8")


def te_quantized_conv2d_pmadd(
    p16: te.Tensor,
    b16: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    attrs: tuple[tuple[int, ...], ...],
    out_channels: int,
    narrow: bool = False,
    scale: te.Tensor | None = None,
    channels_last: bool = False,
) -> te.Tensor:
    """NHWC-group direct conv for vpmaddwd / vpmaddubsw (kernels/int8_conv_avx2.py), requantized into NCHW int8.

    With `scale` (float32 ``[O]``): NCHW float out, ``float32(acc + bias) * scale`` (quantized_conv2d_float).
    With `channels_last` the output is NHWC: each tile's L-channel vectors are stored whole.
    `b16` is ``[O/L, KH, KW, C/V, L, V]``; `bias` with `narrow` is ``[O/L, L]`` int32.
    """
    (sh, sw), _, (dh, dw), _ = attrs
    n, hp, wp = p16.shape[:3]
    o8, kh, kw, c2, lanes = (int(d) for d in b16.shape[:5])
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    cp, kk = te.reduce_axis((0, c2), name="c2"), te.reduce_axis((0, int(b16.shape[5])), name="kk")

    def acc_body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, g: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        a = p16[b, yy * sh + ry * dh, xx * sw + rx * dw, cp, kk].astype("int32")
        return te.sum(a * b16[g, ry, rx, cp, lane, kk].astype("int32"), axis=[ry, rx, cp, kk])

    shape = (n, _conv_out(hp, 0, 0, kh, sh, dh), _conv_out(wp, 0, 0, kw, sw, dw), o8, lanes)
    acc = te.compute(shape, acc_body, name="qconv_acc")
    acc = add_bias_panels(acc, bias) if narrow else acc
    read = lambda b, f, yy, xx: acc[b, yy, xx, f // lanes, f % lanes]  # noqa: E731
    bias_after = None if narrow else bias
    n_, oh, ow = acc.shape[:3]
    if scale is not None:
        with_bias = read if narrow else lambda b, f, yy, xx: _i64(read(b, f, yy, xx)) + _i64(bias[f])
        if channels_last:
            return te_scaled([n_, oh, ow, out_channels], lambda b, yy, xx, f: with_bias(b, f, yy, xx), scale, axis=3)
        return te_scaled([n_, out_channels, oh, ow], with_bias, scale, axis=1)
    if channels_last:
        pixel = lambda r, f: read(r[0], f, r[1], r[2])  # noqa: E731
        return requantize(
            bias_after, multiplier, shift, out_zero_point, [n_, oh, ow], out_channels, pixel, narrow=narrow
        )
    return requantize_nchw(acc, bias_after, multiplier, shift, out_zero_point, read, out_channels, narrow)
