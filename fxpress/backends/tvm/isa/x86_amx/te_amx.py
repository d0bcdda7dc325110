"""TE around the AMX GEMM: the uint8 im2col prologue of a conv and the requantizing epilogues.

The GEMM (gemm.py) computes ``C[M, N] = A[M, K] (uint8) x W[N, K]^T``. A
linear's A is its rows shifted by +128 (te_gemm.te_shift_u8, K padded to a
multiple of 4). A conv's A is its im2col matrix, built here as
``A[M, KH, KW, Cp]`` (M = batch x output pixels, Cp = C rounded up to 4):
with NHWC input each (pixel, ky, kx) row is a contiguous copy of the
pixel's channels, which the injective rule vectorizes; padding reads
``x_zp + 128`` (the zero point, shifted), channels past C read 0. The
GEMM's row-major ``C[M, O]`` is then already the NHWC output, so the
epilogue requantizes it in place of a layout change (or transposes to NCHW).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from fxpress.backends.tvm.te_conv import _conv_out, _reader
from fxpress.backends.tvm.te_requant import requantize, te_scaled


def te_im2col_u8(
    x: te.Tensor,
    x_zero_point: int,
    attrs: tuple[tuple[int, ...], ...],
    kernel: tuple[int, int],
    channels: int,
    channels_last: bool,
) -> te.Tensor:
    """``A[M, KH, KW, Cp]`` uint8 = x + 128 at each output pixel's window (see module doc)."""
    (sh, sw), (top, left, bottom, right), (dh, dw), _ = attrs
    n, c, h, wd, at = _reader(x, channels_last)
    kh, kw = kernel
    oh, ow = _conv_out(h, top, bottom, kh, sh, dh), _conv_out(wd, left, right, kw, sw, dw)
    zp = tirx.const(x_zero_point, "int16")

    def body(r: tirx.Var, ky: tirx.Var, kx: tirx.Var, ci: tirx.Var) -> tirx.PrimExpr:
        b, y, xx = r // (oh * ow), (r // ow) % oh, r % ow
        iy, ix = y * sh - top + ky * dh, xx * sw - left + kx * dw
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
        clamp = lambda v, size: tirx.max(tirx.min(v, size - 1), 0)  # noqa: E731
        read = at(b, tirx.min(ci, c - 1), clamp(iy, h), clamp(ix, wd)).astype("int16")
        value = (tirx.if_then_else(inside, read, zp) + tirx.const(128, "int16")).astype("uint8")
        return tirx.if_then_else(ci < c, value, tirx.const(0, "uint8"))

    return te.compute((n * oh * ow, kh, kw, channels), body, name="im2col_u8")


def te_gemm_requant(
    c: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor | None,
    shift: te.Tensor | None,
    out_zero_point: int,
    narrow: bool,
    scale: te.Tensor | None,
    out_shape: tuple[Any, ...] | None = None,
    channels_first: bool = False,
) -> te.Tensor:
    """The GEMM's ``C[M, N]`` int32 plus `bias`, requantized to int8 (or, with `scale`, float32 out).

    `out_shape` ``(n, oh, ow)`` reads C as a conv's output pixels: NHWC out, or
    NCHW with `channels_first`. `narrow`: `bias` is int32 and the
    requantization may run in int32 (te_requant.requantize).
    """
    rows, n = c.shape
    lead = list(out_shape) if out_shape is not None else [rows]

    def read(rest: list[tirx.Var], j: tirx.Var) -> tirx.PrimExpr:
        if out_shape is None:
            return c[rest[0], j]
        b, y, xx = rest
        return c[(b * out_shape[1] + y) * out_shape[2] + xx, j]

    if scale is not None:
        shape = [lead[0], n, *lead[1:]] if channels_first else [*lead, n]

        def body(*i: tirx.Var) -> tirx.PrimExpr:
            j = i[1] if channels_first else i[-1]
            rest = [i[0], *i[2:]] if channels_first else list(i[:-1])
            return read(rest, j).astype("int64") + bias[j].astype("int64")

        return te_scaled(shape, body, scale, axis=1 if channels_first else -1)
    return requantize(bias, multiplier, shift, out_zero_point, lead, int(n), read, channels_first, narrow)


def te_dynamic_dequantize(
    c: te.Tensor, params: te.Tensor, colsum: te.Tensor, weight_scale: te.Tensor, bias: te.Tensor
) -> te.Tensor:
    """``dynamic_quantized_linear``'s float out from the GEMM of per-row uint8 rows: te_dynamic's u8s8 formula.

    ``y = float(C - zp_row * colsum(w)) * (scale_row * w_scale) + bias``.
    """
    rows, n = c.shape

    def body(r: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        total = c[r, j] - params[r, 1].astype("int32") * colsum[j]
        return total.astype("float32") * (params[r, 0] * weight_scale[j]) + bias[j]

    return te.compute((rows, n), body, name="dynamic_dequantize")
