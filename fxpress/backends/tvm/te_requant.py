"""The integer arithmetic fxpress's int8 converters share, as TE: quantize, dequantize, requantize.

Each computes exactly what the op's PyTorch reference in fxpress/ir/ops.py
computes (float32 quantization with ties to even; gemmlowp-style fixed-point
requantization with round half up and int8 saturation), so compiled results
are bit-exact. `requantize`'s ``narrow`` form is the AVX2-friendly int32
spelling of the same value (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import te, tirx


def i32(v: int) -> tirx.PrimExpr:
    return tirx.const(int(v), "int32")


def round_half_even(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """float32 round-half-to-even of `v`, bit for bit ``nearbyint``, from ops TVM's vectorizer takes.

    TVM 0.27 does not mark ``tirx.nearbyint`` vectorizable: a vectorized loop
    calling it is scalarized whole (the quantize then ran as gathers and byte
    extracts). ``v - floor(v)`` is exact (Sterbenz) except for ``v`` in
    (-0.5, 0), where it rounds to at least 0.5 and the answer, 0, is still
    ``floor + 1``; from 2^23 up ``v`` is an integer and it is 0.
    """
    half, two = tirx.const(0.5, "float32"), tirx.const(2.0, "float32")
    low = tirx.floor(v)
    frac = v - low
    odd = tirx.floor(low * half) * two != low
    up = tirx.Or(frac > half, tirx.And(frac == half, odd))
    return tirx.Select(up, low + tirx.const(1.0, "float32"), low)


def te_quantize(x: te.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> te.Tensor:
    def body(*i: tirx.Var) -> tirx.PrimExpr:
        q = round_half_even(x[i].astype("float32") / tirx.const(scale, "float32")).astype("int32") + i32(zero_point)
        return tirx.max(tirx.min(q, i32(qmax)), i32(qmin)).astype("int8")

    return te.compute(x.shape, body, name="quantize")


def te_dequantize(q: te.Tensor, scale: float, zero_point: int) -> te.Tensor:
    return te.compute(
        q.shape,
        lambda *i: (q[i].astype("int32") - i32(zero_point)).astype("float32") * tirx.const(scale, "float32"),
        name="dequantize",
    )


def te_scaled(shape: list[Any], read: Callable[..., tirx.PrimExpr], scale: Any, axis: int = -1) -> te.Tensor:
    """float32 ``float32(read(*i)) * scale``: the float-out ops' epilogue (``quantized_*_float``).

    `scale` is a float (per tensor) or a float32 tensor indexed by output axis `axis` (per channel).
    """

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        factor = tirx.const(scale, "float32") if isinstance(scale, float) else scale[i[axis]]
        return read(*i).astype("float32") * factor

    return te.compute(shape, body, name="acc_scaled")


def _at(v: te.Tensor | int | None, j: tirx.Var) -> tirx.PrimExpr:
    """A per-channel parameter's entry `j` (a tensor), or a per-tensor one (an int), as int64."""
    if isinstance(v, te.Tensor):
        return v[j].astype("int64")
    return tirx.const(int(v or 0), "int64")


def requantize(
    bias: te.Tensor | None,
    multiplier: te.Tensor | int,
    shift: te.Tensor | int,
    out_zero_point: int,
    lead: list[Any],
    n: int,
    read: Callable[[list[tirx.Var], tirx.Var], tirx.PrimExpr],
    channels_first: bool = False,
    narrow: bool = False,
) -> te.Tensor:
    """int8 output ``[*lead, n]`` requantized from the int32 accumulator that `read` indexes.

    With `channels_first` (NCHW), the output is ``[lead[0], n, *lead[1:]]``.

    `narrow` (the converter proved ``acc + bias`` fits int32 and every total
    shift ``31 + shift`` is at least 32) computes the same value with
    AVX2-friendly operations: ``acc + bias`` in int32, one int32 x int32 ->
    int64 product (``vpmuldq``), the rounding add in int64, then the high half
    shifted by ``total - 32`` in int32 (``vpsravd``); floor(floor(v / 2^32) /
    2^(t-32)) = floor(v / 2^t), so it is bit-identical to the int64 form, which
    needs an emulated 64 x 64 multiply and 64-bit arithmetic shift per lane.
    """

    def requant(*idx: tirx.Var) -> tirx.PrimExpr:
        if channels_first:
            b, j, *spatial = idx
            rest = [b, *spatial]
        else:
            *rest, j = idx
        total = _at(shift, j) + tirx.const(31, "int64")
        half = tirx.const(1, "int64") << (total - tirx.const(1, "int64"))
        if narrow:
            acc = read(rest, j) + (_at(bias, j).astype("int32") if bias is not None else tirx.const(0, "int32"))
            high = ((acc.astype("int64") * _at(multiplier, j) + half) >> tirx.const(32, "int64")).astype("int32")
            y32 = (high >> (total - tirx.const(32, "int64")).astype("int32")) + i32(out_zero_point)
            return tirx.max(tirx.min(y32, i32(127)), i32(-128)).astype("int8")
        wide = (read(rest, j).astype("int64") + _at(bias, j)) * _at(multiplier, j)
        rounded = (wide + half) >> total
        y = rounded + tirx.const(out_zero_point, "int64")
        return tirx.max(tirx.min(y, tirx.const(127, "int64")), tirx.const(-128, "int64")).astype("int8")

    shape = [lead[0], n, *lead[1:]] if channels_first else [*lead, n]
    return te.compute(shape, requant, name="qconv_requant" if channels_first else "qmatmul_requant")


def requantize_nchw(
    acc: te.Tensor,
    bias: te.Tensor | None,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    read: Callable[..., tirx.PrimExpr],
    out_channels: int | None = None,
    narrow: bool = False,
) -> te.Tensor:
    """int8 NCHW output requantized per channel from the accumulator `read` indexes."""
    if out_channels is None:
        n, out_channels, oh, ow = acc.shape
    else:
        n, oh, ow = acc.shape[:3]
    return requantize(
        bias,
        multiplier,
        shift,
        out_zero_point,
        [n, oh, ow],
        out_channels,
        lambda r, f: read(r[0], f, r[1], r[2]),
        channels_first=True,
        narrow=narrow,
    )


def add_bias_panels(acc: te.Tensor, bias: te.Tensor) -> te.Tensor:
    """``acc[.., g, lane] + bias[g, lane]`` in int32, as its own stage (a narrow kernel's first epilogue).

    Stored, the sum reaches the requantization as a plain int32 load, which LLVM
    multiplies with ``vpmuldq``; written inline, TVM's simplifier widens the
    sum's operands to int64 and LLVM emits an emulated 64 x 64 multiply.
    """
    return te.compute(acc.shape, lambda *i: acc[i] + bias[i[-2], i[-1]], name="add_bias")
