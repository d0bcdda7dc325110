"""TE builders of `dynamic_quantized_linear`: per-row uint8 quantization at run time, int8 GEMM, float out.

The row parameters follow fxpress/ir/ops.py exactly (float32 min / max,
scale, zero point, ties to even), so the integer sums equal the reference's;
the float dequantization may differ from it in the last bit (FMA contraction).
"""

from __future__ import annotations

import torch
from tvm import te, tirx

from fxpress.backends.tvm.te_requant import round_half_even


def te_row_params(x: te.Tensor) -> te.Tensor:
    """``[M, 2]`` float32: each row's uint8 ``scale`` and ``zero point`` (``dynamic_quantized_linear``'s rule)."""
    m, kdim = x.shape
    k1, k2 = te.reduce_axis((0, kdim), name="k"), te.reduce_axis((0, kdim), name="k")
    lo = te.compute((m,), lambda r: te.min(x[r, k1], axis=k1), name="row_min")
    hi = te.compute((m,), lambda r: te.max(x[r, k2], axis=k2), name="row_max")
    zero, eps = tirx.const(0.0, "float32"), tirx.const(float(torch.finfo(torch.float32).eps), "float32")

    def body(r: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        low = tirx.min(lo[r], zero)
        scale = tirx.max((tirx.max(hi[r], zero) - low) / tirx.const(255.0, "float32"), eps)
        zp = tirx.min(tirx.max(tirx.nearbyint(-low / scale), zero), tirx.const(255.0, "float32"))
        return tirx.if_then_else(j == 0, scale, zp)

    return te.compute((m, 2), body, name="row_params")


def te_row_quantize(x: te.Tensor, params: te.Tensor, v: int, u8: bool) -> te.Tensor:
    """``[M, K/V, V]``: uint8 ``u`` (u8s8) or int16 ``u - zp`` (s16) of each row, zero past K."""
    m, kdim = x.shape
    groups = (int(kdim) + v - 1) // v

    def body(r: tirx.Var, kp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        k = kp * v + j
        q = round_half_even(x[r, tirx.min(k, kdim - 1)] / params[r, 0]) + params[r, 1]
        u = tirx.min(tirx.max(q, tirx.const(0.0, "float32")), tirx.const(255.0, "float32"))
        dtype = "uint8" if u8 else "int16"
        value = u.astype(dtype) if u8 else (u - params[r, 1]).astype(dtype)
        return tirx.if_then_else(k < kdim, value, tirx.const(0, dtype))

    return te.compute((m, groups, v), body, name="row_quantize")


def te_dynamic_linear(
    a: te.Tensor,
    b: te.Tensor,
    params: te.Tensor,
    colsum: te.Tensor | None,
    weight_scale: te.Tensor,
    bias: te.Tensor,
    n: int,
) -> te.Tensor:
    """The u8s8 / s16 GEMM of row-quantized activations, dequantized per row and column into float32.

    ``y = float(acc - zp * colsum) * (scale * w_scale) + bias`` (u8s8: ``acc`` is
    of ``u``; s16 reads ``u - zp`` and has no ``colsum`` term).
    """
    rows, groups, v = a.shape[0], int(b.shape[0]), int(b.shape[3])
    kp, kk = te.reduce_axis((0, b.shape[1]), name="k2"), te.reduce_axis((0, v), name="kk")

    def acc_body(r: tirx.Var, g: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        return te.sum(a[r, kp, kk].astype("int32") * b[g, kp, lane, kk].astype("int32"), axis=[kp, kk])

    acc = te.compute((rows, groups, 8), acc_body, name="qmatmul_acc")

    def out(r: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        total = acc[r, j // 8, j % 8]
        if colsum is not None:
            total = total - params[r, 1].astype("int32") * colsum[j]
        return total.astype("float32") * (params[r, 0] * weight_scale[j]) + bias[j]

    return te.compute((rows, n), out, name="dynamic_dequantize")


def te_dynamic_linear_generic(
    a: te.Tensor, w: te.Tensor, weight_scale: te.Tensor, bias: te.Tensor, params: te.Tensor
) -> te.Tensor:
    """Without AVX2: ``a`` is int16 ``u - zp`` [M, K/1, 1]; int32 accumulation over plain int8 weights."""
    rows, n, kdim = a.shape[0], w.shape[0], w.shape[1]
    k = te.reduce_axis((0, kdim), name="k")
    acc = te.compute(
        (rows, n), lambda r, j: te.sum(a[r, k, 0].astype("int32") * w[j, k].astype("int32"), axis=k), name="acc"
    )
    return te.compute(
        (rows, n),
        lambda r, j: acc[r, j].astype("float32") * (params[r, 0] * weight_scale[j]) + bias[j],
        name="dynamic_dequantize",
    )
