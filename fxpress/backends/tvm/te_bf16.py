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
    width = k if k_padded is None else k_padded

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        if width is k or int(width) == int(k):
            return _bits(x[i]).astype("uint16")
        inside = _bits(x[(*i[:-1], tirx.min(i[-1], k - 1))]).astype("uint16")
        return tirx.Select(i[-1] < k, inside, tirx.const(0, "uint16"))

    return te.compute((*lead, width), body, name="bf16_bits")


def te_bf16_round(x: te.Tensor) -> te.Tensor:
    """float32 `x` rounded to bf16 values (float32 out)."""

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        return tirx.reinterpret("float32", _bits(x[i]) << tirx.const(16, "uint32"))

    return te.compute(x.shape, body, name="bf16_round")
