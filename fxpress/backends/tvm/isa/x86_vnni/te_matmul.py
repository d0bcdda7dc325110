"""TE of the VNNI batched int8 matmul (attention): u8s8 quads for 16-lane ``vpdpbusd``, corrected exactly.

The AVX2 form of ``quantized_matmul`` (te_gemm.py `te_quantized_matmul_pmadd`)
widens both activations to int16 and runs ``vpmaddwd`` / ``vpdpwssd`` in
8-lane panels: 2 multiply-adds per lane and instruction. With VNNI,
``vpdpbusd`` takes 4 uint8 x int8 products per int32 lane and never
saturates, so both operands stay bytes and the panels are 16 lanes wide (zmm):

    U[f*M + i, k/4, k%4]        uint8  a[f, i, k] + 128, zero past K      (`te_shift_rows_u8`)
    B[f*N/16 + g, k/4, n%16, k%4]  int8  b[f, k, 16g + n%16], zero past K, N (`te_pack_activation_u8`)
    C[f*M + i, g, lane]         int32  sum_k U * B                          (the GEMM rule's block)

Neither shift nor zero point is in the products, so the exact accumulator is
recovered afterwards, with c = 128 + a_zp:

    sum_k (a - a_zp)(b - b_zp) = sum_k (u - c)(b - b_zp)
                               = sum_k u*b  - b_zp * rowsum(u)  + c * (K * b_zp - colsum(b))

The two corrections come from the activations, so they are computed per call
(`te_row_fix`, `te_col_fix`: one pass over a and b each, K * (M + N) adds
against the GEMM's K * M * N) and left out when their factor is zero (a
softmax output has a_zp = -128, so c = 0). They are added to the accumulator
in their own int32 stage, which the GEMM rule moves under its tile before the
requantization or float scaling (te_requant.py), like a narrow linear's bias.
Every intermediate fits int32 when `fits_int32` holds for K (K <= 16448);
the converter keeps the s16 form otherwise, and for N % 16 != 0 and symbolic
shapes (isa/x86_vnni/int8.py).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from fxpress.backends.tvm.kernels.int8_avx2 import ROW_GROUP
from fxpress.backends.tvm.te_gemm import product, unflatten
from fxpress.backends.tvm.te_requant import requantize, te_scaled

LANES = 16  # int32 lanes of a zmm accumulator
GROUP = 4  # uint8 x int8 products per lane of vpdpbusd


def fits_int32(kdim: int) -> bool:
    """Every term of the corrected sum and each partial sum of it fits int32 for depth `kdim`.

    |sum u*b|, |b_zp * rowsum(u)|, |c * colsum(b)| and |K * c * b_zp| are each
    at most 255 * 128 * K; four of them added stay below 2^31.
    """
    return 4 * 255 * 128 * kdim < (1 << 31)


def te_shift_rows_u8(a: te.Tensor, k4: int) -> te.Tensor:
    """U[f * M + i, k/4, k%4] = a[batch f, i, k] + 128 as uint8, zero past K: one row dim for the GEMM rule."""
    *batch, m, kdim = a.shape

    def body(row: tirx.Var, kp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        k = kp * GROUP + j
        index = unflatten(row // m, batch)
        value = (a[(*index, row % m, tirx.min(k, kdim - 1))].astype("int16") + tirx.const(128, "int16")).astype("uint8")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "uint8"))

    return te.compute([product(batch) * m, k4, GROUP], body, name="shift_rows_u8")


def te_pack_activation_u8(b: te.Tensor, k4: int, lanes: int = LANES) -> te.Tensor:
    """B[f * N/L + g, k/4, n%L, k%4] = b[batch f, k, n] as int8 panels (per call), zero past K and N."""
    *batch, kdim, n = b.shape
    groups = (int(n) + lanes - 1) // lanes

    def body(row: tirx.Var, kp: tirx.Var, lane: tirx.Var, kk: tirx.Var) -> tirx.PrimExpr:
        index, g = unflatten(row // groups, batch), row % groups
        k, j = kp * GROUP + kk, g * lanes + lane
        value = b[(*index, tirx.min(k, kdim - 1), tirx.min(j, n - 1))]
        return tirx.if_then_else(tirx.all(k < kdim, j < n), value, tirx.const(0, "int8"))

    return te.compute([product(batch) * groups, k4, lanes, GROUP], body, name="pack_activation_u8")


def te_row_fix(a: te.Tensor, b_zero_point: int) -> te.Tensor:
    """R[f * M + i] = -b_zp * sum_k (a[f, i, k] + 128) in int32: the rowsum correction, per row."""
    *batch, m, kdim = a.shape
    k = te.reduce_axis((0, kdim), name="k")

    def body(row: tirx.Var) -> tirx.PrimExpr:
        index = unflatten(row // m, batch)
        return te.sum(a[(*index, row % m, k)].astype("int32") + tirx.const(128, "int32"), axis=k)

    rowsum = te.compute([product(batch) * m], body, name="rowsum_u8")
    return te.compute(rowsum.shape, lambda r: rowsum[r] * tirx.const(-b_zero_point, "int32"), name="row_fix")


def te_col_fix(b: te.Tensor, a_zero_point: int, b_zero_point: int, lanes: int = LANES) -> te.Tensor:
    """Cf[f * N/L + g, n%L] = c * (K * b_zp - sum_k b[f, k, n]), c = 128 + a_zp, int32: the colsum correction."""
    *batch, kdim, n = b.shape
    groups = (int(n) + lanes - 1) // lanes
    c = 128 + int(a_zero_point)
    k = te.reduce_axis((0, kdim), name="k")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *index, j = idx
        return te.sum(b[(*index, k, j)].astype("int32"), axis=k)

    colsum = te.compute([*batch, n], body, name="colsum")
    base = tirx.const(c * int(kdim) * int(b_zero_point), "int32")

    def fix(row: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        index, j = unflatten(row // groups, batch), (row % groups) * lanes + lane
        value = base - colsum[(*index, tirx.min(j, n - 1))] * tirx.const(c, "int32")
        return tirx.if_then_else(j < n, value, tirx.const(0, "int32"))

    return te.compute([product(batch) * groups, lanes], fix, name="col_fix")


def te_quantized_matmul_u8s8(
    u: te.Tensor,
    b8: te.Tensor,
    row_fix: te.Tensor | None,
    col_fix: te.Tensor | None,
    multiplier: int,
    shift: int,
    out_zero_point: int,
    batch: list[Any] | None,
    m: Any,
    n: int,
    narrow: bool = False,
    scale: float | None = None,
) -> te.Tensor:
    """``vpdpbusd`` GEMM over rows (batch, i), corrected (module doc), requantized per tensor (or float out).

    `u` ``[rows, K/4, 4]`` uint8 (`te_shift_rows_u8`), `b8` ``[batch * N/L, K/4, L, 4]`` int8
    (`te_pack_activation_u8`); `row_fix` ``[rows]`` and `col_fix` ``[batch * N/L, L]``
    (int32, None where their factor is zero). The output is ``[*batch, m, n]``
    (``[rows, n]`` with `batch` None), so attention's scaling and mask fuse into
    the epilogue, as in te_gemm.py `te_quantized_matmul_pmadd`.
    """
    rows, k4, lanes = u.shape[0], u.shape[1], int(b8.shape[2])
    groups = tirx.const((n + lanes - 1) // lanes, "int64")
    kp = te.reduce_axis((0, k4), name="k4")
    kk = te.reduce_axis((0, GROUP), name="kk")

    def acc_body(row: tirx.Var, g: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        a = u[row, kp, kk].astype("int32")
        return te.sum(a * b8[row // m * groups + g, kp, lane, kk].astype("int32"), axis=[kp, kk])

    acc = te.compute([rows, groups, lanes], acc_body, name="qmatmul_acc", attrs={ROW_GROUP: int(m)})

    def fixed(row: tirx.PrimExpr, g: tirx.PrimExpr, lane: tirx.PrimExpr) -> tirx.PrimExpr:
        value = acc[row, g, lane]
        if row_fix is not None:
            value = value + row_fix[row]
        if col_fix is not None:
            value = value + col_fix[row // m * groups + g, lane]
        return value

    corrected = fixed
    if scale is None and (row_fix is not None or col_fix is not None):
        # the requantization reads the corrected sum from its own int32 stage (see te_requant.add_bias_panels:
        # inline, the sum would be widened to int64); the float form converts it inline
        fixed_stage = te.compute(acc.shape, fixed, name="acc_fix")
        corrected = lambda row, g, lane: fixed_stage[row, g, lane]  # noqa: E731

    shape = [rows] if batch is None else [*batch, m]

    def read(index: list[tirx.Var], j: tirx.Var) -> tirx.PrimExpr:
        row = tirx.const(0, "int64")
        for i, d in zip(index, shape, strict=True):  # the row of an output index: row-major over `shape`
            row = row * d + i
        return corrected(row, j // lanes, j % lanes)

    if scale is not None:
        return te_scaled([*shape, n], lambda *i: read(list(i[:-1]), i[-1]), scale)
    return requantize(None, multiplier, shift, out_zero_point, shape, n, read, narrow=narrow)
