"""TE builders of the int8 GEMMs: `quantized_linear` and `quantized_matmul`, generic and panel forms.

The panel forms lay their operands out for the micro-kernels of
kernels/int8_avx2.py: int16 pairs for ``vpmaddwd`` (s16), uint8 / int8 quads
for ``vpmaddubsw`` or VNNI's ``vpdpbusd`` (u8s8); the accumulation block
``C[rows, N/L, L]`` has the shape the CPUInt8Gemm rule tensorizes, the
requantization is its epilogue. The lane width L (8: ymm, 16: zmm) is the
weight panels' (``B[N/L, K/V, L, V]``), read from their shape.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from fxpress.backends.tvm.kernels.int8_avx2 import ROW_GROUP
from fxpress.backends.tvm.te_requant import add_bias_panels, i32, requantize, te_scaled


def te_quantized_linear(
    x: te.Tensor,
    wp: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    x_zero_point: int,
    out_zero_point: int,
    n: int,
    scale: te.Tensor | None = None,
) -> te.Tensor:
    """Generic int32 GEMM over the conv/matmul rule's weight panels, requantized (or, with `scale`, float out)."""
    panel = int(wp.shape[2])
    k = te.reduce_axis((0, x.shape[-1]), name="k")
    lead = list(x.shape[:-1])

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, j = idx
        a = x[(*rest, k)].astype("int32") - i32(x_zero_point)
        return te.sum(a * wp[j // panel, k, j % panel].astype("int32"), axis=k)

    acc = te.compute([*lead, n], acc_body, name="qmatmul_acc")
    if scale is not None:
        return te_scaled([*lead, n], lambda *i: acc[i].astype("int64") + bias[i[-1]].astype("int64"), scale)
    return requantize(bias, multiplier, shift, out_zero_point, lead, n, lambda rest, j: acc[(*rest, j)])


def te_widen(x: te.Tensor, x_zero_point: int, k2: int) -> te.Tensor:
    """A16[.., k2, 2] = x[.., 2*k2 + j] - x_zp as int16, zero past K (the vpmaddwd prologue)."""
    kdim = x.shape[-1]

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, kp, j = idx
        k = kp * 2 + j
        value = x[(*rest, tirx.min(k, kdim - 1))].astype("int16") - tirx.const(x_zero_point, "int16")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "int16"))

    return te.compute([*x.shape[:-1], k2, 2], body, name="widen")


def te_shift_u8(x: te.Tensor, k4: int) -> te.Tensor:
    """A8[.., k4, 4] = x[.., 4*k4 + j] + 128 as uint8, zero past K (the vpmaddubsw prologue)."""
    kdim = x.shape[-1]

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, kp, j = idx
        k = kp * 4 + j
        value = (x[(*rest, tirx.min(k, kdim - 1))].astype("int16") + tirx.const(128, "int16")).astype("uint8")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "uint8"))

    return te.compute([*x.shape[:-1], k4, 4], body, name="shift_u8")


def te_panel_acc(a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """``C[m.., g, lane] = sum_(k2, kk) A[m.., k2, kk] * B[g, k2, lane, kk]`` in int32: the block the GEMM rule tensorizes.

    `a` ``[m.., K/V, V]`` (uint8 | int16), `b` ``[N/L, K/V, L, V]`` (int8 | int16); C is ``[m.., N/L, L]``.
    """
    groups, k2, lanes, v = (int(d) for d in b.shape)
    kp = te.reduce_axis((0, k2), name="k2")
    kk = te.reduce_axis((0, v), name="kk")

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, g, lane = idx
        return te.sum(a[(*rest, kp, kk)].astype("int32") * b[g, kp, lane, kk].astype("int32"), axis=[kp, kk])

    return te.compute([*a.shape[:-2], groups, lanes], acc_body, name="qmatmul_acc")


def te_quantized_linear_pmadd(
    a16: te.Tensor,
    b16: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    n: int,
    narrow: bool = False,
    scale: te.Tensor | None = None,
) -> te.Tensor:
    """The s16 (int16 pairs) or u8s8 (uint8 x int8 quads) panel GEMM, by the operands' layout and lane width.

    `b16` is ``[N/L, K/V, L, V]``: L (8 or 16) is the accumulators' lane width.
    `narrow`: `bias` is ``[N/L, L]`` int32 (bias panels), added to the
    accumulators in int32, and the requantization runs in int32 (see `requantize`).
    `scale` (float32 ``[N]``): float out, ``float32(acc + bias) * scale`` (quantized_linear_float).
    """
    lanes = int(b16.shape[2])
    lead = list(a16.shape[:-2])
    acc = te_panel_acc(a16, b16)
    acc = add_bias_panels(acc, bias) if narrow else acc
    read = lambda rest, j: acc[(*rest, j // lanes, j % lanes)]  # noqa: E731
    if scale is not None:
        with_bias = read if narrow else lambda rest, j: read(rest, j).astype("int64") + bias[j].astype("int64")
        return te_scaled([*lead, n], lambda *i: with_bias(list(i[:-1]), i[-1]), scale)
    return requantize(None if narrow else bias, multiplier, shift, out_zero_point, lead, n, read, narrow=narrow)


def te_quantized_matmul(
    a: te.Tensor,
    b: te.Tensor,
    a_zero_point: int,
    b_zero_point: int,
    multiplier: int,
    shift: int,
    out_zero_point: int,
    scale: float | None = None,
) -> te.Tensor:
    """Generic int32 batch matmul of two int8 activations (batch dims broadcast), requantized per tensor.

    With `scale`: float32 out, ``float32(acc) * scale`` (quantized_matmul_float).
    """
    *batch_a, m, kdim = a.shape
    *batch_b, _, n = b.shape
    batch = _broadcast_dims(list(batch_a), list(batch_b))
    r = te.reduce_axis((0, kdim), name="k")

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *bi, i, j = idx
        x = a[(*_bcast_index(batch_a, bi), i, r)].astype("int32") - i32(a_zero_point)
        y = b[(*_bcast_index(batch_b, bi), r, j)].astype("int32") - i32(b_zero_point)
        return te.sum(x * y, axis=r)

    acc = te.compute([*batch, m, n], acc_body, name="qmatmul_acc")
    if scale is not None:
        return te_scaled([*batch, m, n], lambda *i: acc[i], scale)
    return requantize(None, multiplier, shift, out_zero_point, [*batch, m], n, lambda rest, j: acc[(*rest, j)])


def _broadcast_dims(x: list[Any], y: list[Any]) -> list[Any]:
    x, y = [1] * (len(y) - len(x)) + x, [1] * (len(x) - len(y)) + y
    return [q if isinstance(p, int | tirx.IntImm) and int(p) == 1 else p for p, q in zip(x, y, strict=True)]


def _bcast_index(dims: list[Any], index: list[tirx.Var]) -> list[Any]:
    """`index` over the broadcast batch dims, restricted to `dims` (size-1 dims read element 0)."""
    index = index[len(index) - len(dims) :]
    return [0 if isinstance(d, int | tirx.IntImm) and int(d) == 1 else i for d, i in zip(dims, index, strict=True)]


def te_pack_activation(b: te.Tensor, b_zero_point: int, k2: int, lanes: int = 8) -> te.Tensor:
    """B16[f * N/L + g, k/2, n%L, k%2] = b[batch f, k, n] - b_zp as int16, zero past K and N (per call)."""
    *batch, kdim, n = b.shape
    n8 = (int(n) + lanes - 1) // lanes

    def body(row: tirx.Var, kp: tirx.Var, lane: tirx.Var, kk: tirx.Var) -> tirx.PrimExpr:
        index, g = unflatten(row // n8, batch), row % n8
        k, j = kp * 2 + kk, g * lanes + lane
        value = b[(*index, tirx.min(k, kdim - 1), tirx.min(j, n - 1))].astype("int16")
        inside = tirx.all(k < kdim, j < n)
        return tirx.if_then_else(inside, value - tirx.const(b_zero_point, "int16"), tirx.const(0, "int16"))

    return te.compute([product(batch) * n8, k2, lanes, 2], body, name="pack_activation")


def te_widen_rows(a: te.Tensor, a_zero_point: int, k2: int) -> te.Tensor:
    """A16[f * M + i, k/2, k%2] = a[batch f, i, k] - a_zp as int16, zero past K: one row dim for the GEMM rule."""
    *batch, m, kdim = a.shape

    def body(row: tirx.Var, kp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        k = kp * 2 + j
        index = unflatten(row // m, batch)
        value = a[(*index, row % m, tirx.min(k, kdim - 1))].astype("int16") - tirx.const(a_zero_point, "int16")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "int16"))

    return te.compute([product(batch) * m, k2, 2], body, name="widen_rows")


def product(dims: list[Any]) -> Any:
    """The product of (possibly symbolic) sizes: the row count of flattened batch dimensions."""
    out = 1
    for d in dims:
        out = out * d
    return out


def unflatten(flat: tirx.PrimExpr, dims: list[Any]) -> list[tirx.PrimExpr]:
    """The index into `dims` of row-major position `flat` (the inverse of flattening the batch dimensions)."""
    index = []
    for d in reversed(dims):
        index.insert(0, flat % d)
        flat = flat // d
    return index


def te_quantized_matmul_pmadd(
    a16: te.Tensor,
    b16: te.Tensor,
    multiplier: int,
    shift: int,
    out_zero_point: int,
    batch: list[Any] | None,
    m: int,
    n: int,
    narrow: bool = False,
    scale: float | None = None,
) -> te.Tensor:
    """vpmaddwd GEMM over rows (batch, i) (kernels/int8_avx2.py; B panels per batch), requantized per tensor.

    `b16` is ``[batch * N/L, K/2, L, 2]`` (`te_pack_activation`): L is the lane width.
    With `scale`: float32 out, ``float32(acc) * scale`` (quantized_matmul_float).

    The accumulator's rows are one dimension: the GEMM rule fuses several
    leading loops, and tensorizing under a fused loop fails in TVM 0.27 (an
    int32/int64 iterator). The output has the op's shape ``[*batch, m, n]``,
    so element-wise consumers (attention's scaling and mask) fuse into the
    epilogue instead of running after a reshape; with `batch` None (symbolic)
    it is ``[rows, n]``.
    """
    rows, k2, lanes = a16.shape[0], a16.shape[1], int(b16.shape[2])
    n8 = tirx.const((n + lanes - 1) // lanes, "int64")
    kp = te.reduce_axis((0, k2), name="k2")
    kk = te.reduce_axis((0, 2), name="kk")

    def acc_body(row: tirx.Var, g: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        a = a16[row, kp, kk].astype("int32")
        return te.sum(a * b16[row // m * n8 + g, kp, lane, kk].astype("int32"), axis=[kp, kk])

    acc = te.compute([rows, n8, lanes], acc_body, name="qmatmul_acc", attrs={ROW_GROUP: int(m)})

    shape = [rows] if batch is None else [*batch, m]

    def read(index: list[tirx.Var], j: tirx.Var) -> tirx.PrimExpr:
        row = tirx.const(0, "int64")
        for i, d in zip(index, shape, strict=True):  # the row of an output index: row-major over `shape`
            row = row * d + i
        return acc[row, j // lanes, j % lanes]

    if scale is not None:
        return te_scaled([*shape, n], lambda *i: read(list(i[:-1]), i[-1]), scale)
    return requantize(None, multiplier, shift, out_zero_point, shape, n, read, narrow=narrow)
