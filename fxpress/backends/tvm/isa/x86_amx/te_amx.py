"""TE around the AMX GEMM: the uint8 im2col prologue of a conv and the requantizing epilogues.

The GEMM (gemm.py) computes ``C[M, N] = A[M, K] (uint8) x W[N, K]^T``. A
linear's A is its rows shifted by +128 (te_gemm.te_shift_u8, K padded to a
multiple of 4). A conv's A is its im2col matrix ``A[M, KH, KW, Cp]`` (M =
batch x output pixels, Cp = C rounded up to 4), gathered from the padded,
shifted NHWC image the VNNI direct conv also starts from
(te_conv.te_conv_shift_u8: ``x + 128``, ``x_zp + 128`` in the padding, 0
past C): each (pixel, ky, kx) is a copy of Cp contiguous bytes. The
im2col function is kept out of fusion (opaque), so the element-wise work
before it (the previous layer's requantization, ReLU) runs once per
element in the padded image, not once per window position. The
GEMM's row-major ``C[M, O]`` is then already the NHWC output, so the
epilogue requantizes it in place of a layout change (or transposes to NCHW).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from fxpress.backends.tvm.te_requant import requantize, te_scaled


def te_im2col_u8(p: te.Tensor, attrs: tuple[tuple[int, ...], ...], kernel: tuple[int, int]) -> te.Tensor:
    """``A[M, KH, KW, Cp]`` uint8: each output pixel's window, gathered from the padded image `p`.

    `p` is te_conv.te_conv_shift_u8's ``[n, H + pads, W + pads, Cp/4, 4]`` (``x + 128``, the shifted zero
    point in the padding, 0 past C), so every read is in bounds and each (pixel, ky, kx) is a copy of
    Cp contiguous bytes.
    """
    (sh, sw), _, (dh, dw), _ = attrs
    n, hp, wp, c4, _four = (int(d) for d in p.shape)
    kh, kw = kernel
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1

    def body(r: tirx.Var, ky: tirx.Var, kx: tirx.Var, ci: tirx.Var) -> tirx.PrimExpr:
        b, y, xx = r // (oh * ow), (r // ow) % oh, r % ow
        return p[b, y * sh + ky * dh, xx * sw + kx * dw, ci // 4, ci % 4]

    return te.compute((n * oh * ow, kh, kw, c4 * 4), body, name="im2col_u8")


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
