"""TE of bfloat16 rounding: float32 values to bf16 bits (uint16), or to float32 holding bf16 values.

bf16 is the top half of a float32. Rounding to nearest even, as torch's
``.to(torch.bfloat16)`` does, is integer arithmetic on the bits::

    u = bits(x); bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16        # NaN: (u >> 16) | 0x0040 (stays NaN)

so the rounding needs no bf16 support from TVM or LLVM. ``te_bf16_bits``
feeds the AMX-BF16 GEMM (its A rows, K padded with zeros to even; its
weights, packed at compile time); ``te_bf16_round`` gives the float32 value
of the same rounding, for a float32 GEMM that computes what ``tdpbf16ps``
does (the products of bf16 values are exact in float32).
"""

from __future__ import annotations

from tvm import te, tirx


def _bits(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """The bf16 bits (uint32 in 0..0xFFFF) of float32 `v`, rounded to nearest even; NaN stays NaN."""
    u = tirx.reinterpret("uint32", v)
    lsb = (u >> tirx.const(16, "uint32")) & tirx.const(1, "uint32")
    rounded = (u + tirx.const(0x7FFF, "uint32") + lsb) >> tirx.const(16, "uint32")
    nan = (u & tirx.const(0x7FFFFFFF, "uint32")) > tirx.const(0x7F800000, "uint32")
    quiet = (u >> tirx.const(16, "uint32")) | tirx.const(0x40, "uint32")
    return tirx.Select(nan, quiet, rounded)


def te_bf16_bits(x: te.Tensor, k_padded: int | None = None) -> te.Tensor:
    """uint16 bf16 bits of float32 `x` [.., K], the last axis zero-padded to `k_padded`."""
    *lead, k = x.shape
    if k_padded is None or k_padded == int(k):
        return te.compute(x.shape, lambda *i: _bits(x[i]).astype("uint16"), name="bf16_bits")

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        inside = _bits(x[(*i[:-1], tirx.min(i[-1], k - 1))]).astype("uint16")
        return tirx.Select(i[-1] < k, inside, tirx.const(0, "uint16"))

    return te.compute((*lead, k_padded), body, name="bf16_bits")


def te_bf16_round(x: te.Tensor) -> te.Tensor:
    """float32 `x` rounded to bf16 values (float32 out)."""

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        return tirx.reinterpret("float32", _bits(x[i]) << tirx.const(16, "uint32"))

    return te.compute(x.shape, body, name="bf16_round")


def te_bf16_image(x: te.Tensor, padding: tuple[int, int, int, int], c_padded: int) -> te.Tensor:
    """``P[n, y, x, c]`` uint16: NCHW float32 `x` as NHWC bf16 bits, zero in the padding and past C up to `c_padded`.

    `padding` is ``(top, left, bottom, right)``; bf16 zero is the bit pattern 0.
    """
    n, c, h, wd = x.shape
    top, left, bottom, right = padding

    def body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, ci: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(yy >= top, yy < h + top, xx >= left, xx < wd + left, ci < c)
        read = x[
            b, tirx.min(ci, c - 1), tirx.min(tirx.max(yy - top, 0), h - 1), tirx.min(tirx.max(xx - left, 0), wd - 1)
        ]
        return tirx.Select(inside, _bits(read).astype("uint16"), tirx.const(0, "uint16"))

    return te.compute((n, h + top + bottom, wd + left + right, c_padded), body, name="bf16_image")


def te_bf16_im2col(p: te.Tensor, attrs: tuple[tuple[int, ...], ...], kernel: tuple[int, int]) -> te.Tensor:
    """``A[M, KH, KW, Cp]`` uint16: each output pixel's window of the padded image `p` (`te_bf16_image`)."""
    (sh, sw), _, (dh, dw), _ = attrs
    n, hp, wp, cp = (int(d) for d in p.shape)
    kh, kw = kernel
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1

    def body(r: tirx.Var, ky: tirx.Var, kx: tirx.Var, ci: tirx.Var) -> tirx.PrimExpr:
        b, y, xx = r // (oh * ow), (r // ow) % oh, r % ow
        return p[b, y * sh + ky * dh, xx * sw + kx * dw, ci]

    return te.compute((n * oh * ow, kh, kw, cp), body, name="bf16_im2col")


def te_gemm_nchw_bias(c: te.Tensor, bias: te.Tensor | None, out: tuple[int, int, int]) -> te.Tensor:
    """The GEMM's float32 ``C[n*oh*ow, O]`` plus `bias`, as an NCHW ``[n, O, oh, ow]`` conv output."""
    n, oh, ow = out
    channels = c.shape[1]

    def body(b: tirx.Var, o: tirx.Var, y: tirx.Var, xx: tirx.Var) -> tirx.PrimExpr:
        value = c[(b * oh + y) * ow + xx, o]
        return value + bias[o] if bias is not None else value

    return te.compute((n, channels, oh, ow), body, name="bf16_conv_out")
