"""Converters from fxpress's own torch.library ops (fxpress/ir/ops.py) to Relax.

`from_exported_program(..., custom_convert_map=converters(spec))` looks ops up
by ``node.target.__name__`` (``"quantized_linear.default"``); each converter
is ``f(node, importer) -> relax.Expr`` and emits through
``importer.block_builder``. Every converter computes exactly the integer
arithmetic of the op's PyTorch reference, so compiled results are bit-exact.

``quantized_linear`` is the int8 lowering entry: int8 activations, int8
weights (packed into the matmul rule's panels by a ``layout_transform`` that
``LiftTransformParams`` moves to compile time), int32 bias and per-channel
fixed-point requantization, int8 out. The int32 accumulation block has the
multiply-accumulate shape the CPU matmul rule schedules; the requantization
is its fused epilogue. On AVX2 CPUs the converter emits one of the two exact
forms of kernels/int8_avx2.py instead: u8s8 (``vpmaddubsw``: uint8 ``x + 128``
in groups of 4, int8 weight panels, the shift undone through the bias) when
the layer's actual weights cannot saturate it (`u8s8_safe`, checked here on
the values), else s16 (``vpmaddwd``: int16-widened operands in pairs).

``quantized_conv2d`` (NCHW int8 in and out): on AVX2, groups=1 convs become a
direct convolution (kernels/int8_conv_avx2.py), u8s8 or s16 by the same test:
a prologue shifts (``x + 128``, padding ``x_zp + 128``) or widens
(``x - x_zp``, padding 0) the input into padded NHWC channel groups, the
weights are packed once at compile time as ``[O/8, KH, KW, C/V, 8, V]``, and
the requantization writes NCHW int8 from each register tile. Depthwise and grouped convs, and
CPUs without AVX2, take the generic form: ``pad(x - x_zp)`` as int16 and an
int32-accumulating NCHW conv (weights in the conv rule's panels when
groups=1) that the CPU conv rule schedules, requantization fused.

``quantized_matmul`` (two int8 activations, per-tensor requantization): on
AVX2 both operands are widened per call (``b`` into the GEMM's ``[N/8, K/2,
8, 2]`` panels, one set per batch) and the vpmaddwd GEMM rule runs over the
flattened rows; otherwise a generic int32 batch matmul for the matmul rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from tvm import relax, te, tirx

from fxpress.backends.tvm.block_sparse import convert_block_sparse_linear
from fxpress.backends.tvm.kernels.int8_avx2 import has_avx2, u8s8_safe
from fxpress.backends.tvm.kernels.matmul import register_tile
from fxpress.backends.tvm.targets import TargetSpec

Converter = Callable[[Any, Any], relax.Expr]

U8S8 = True  # take the vpmaddubsw kernels where the weights allow (tests switch it off to cover vpmaddwd)


def _i32(v: int) -> tirx.PrimExpr:
    return tirx.const(int(v), "int32")


def _te_quantize(x: te.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> te.Tensor:
    def body(*i: tirx.Var) -> tirx.PrimExpr:
        q = tirx.nearbyint(x[i].astype("float32") / tirx.const(scale, "float32")).astype("int32") + _i32(zero_point)
        return tirx.max(tirx.min(q, _i32(qmax)), _i32(qmin)).astype("int8")

    return te.compute(x.shape, body, name="quantize")


def _te_dequantize(q: te.Tensor, scale: float, zero_point: int) -> te.Tensor:
    return te.compute(
        q.shape,
        lambda *i: (q[i].astype("int32") - _i32(zero_point)).astype("float32") * tirx.const(scale, "float32"),
        name="dequantize",
    )


def _te_quantized_linear(
    x: te.Tensor,
    wp: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    x_zero_point: int,
    out_zero_point: int,
    n: int,
) -> te.Tensor:
    panel = int(wp.shape[2])
    k = te.reduce_axis((0, x.shape[-1]), name="k")
    lead = list(x.shape[:-1])

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, j = idx
        a = x[(*rest, k)].astype("int32") - _i32(x_zero_point)
        return te.sum(a * wp[j // panel, k, j % panel].astype("int32"), axis=k)

    acc = te.compute([*lead, n], acc_body, name="qmatmul_acc")
    return _requantize(bias, multiplier, shift, out_zero_point, lead, n, lambda rest, j: acc[(*rest, j)])


def _te_widen(x: te.Tensor, x_zero_point: int, k2: int) -> te.Tensor:
    """A16[.., k2, 2] = x[.., 2*k2 + j] - x_zp as int16, zero past K (the vpmaddwd prologue)."""
    kdim = x.shape[-1]

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, kp, j = idx
        k = kp * 2 + j
        value = x[(*rest, tirx.min(k, kdim - 1))].astype("int16") - tirx.const(x_zero_point, "int16")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "int16"))

    return te.compute([*x.shape[:-1], k2, 2], body, name="widen")


def _te_shift_u8(x: te.Tensor, k4: int) -> te.Tensor:
    """A8[.., k4, 4] = x[.., 4*k4 + j] + 128 as uint8, zero past K (the vpmaddubsw prologue)."""
    kdim = x.shape[-1]

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, kp, j = idx
        k = kp * 4 + j
        value = (x[(*rest, tirx.min(k, kdim - 1))].astype("int16") + tirx.const(128, "int16")).astype("uint8")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "uint8"))

    return te.compute([*x.shape[:-1], k4, 4], body, name="shift_u8")


def _te_quantized_linear_pmadd(
    a16: te.Tensor,
    b16: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    n: int,
    narrow: bool = False,
) -> te.Tensor:
    """The vpmaddwd (int16 pairs) or vpmaddubsw (uint8 x int8 quads) GEMM, by the operands' layout.

    `narrow`: `bias` is ``[N/8, 8]`` int32 (`_bias_panels`), added to the
    accumulators in int32, and the requantization runs in int32 (see `_requantize`).
    """
    groups, k2, v = int(b16.shape[0]), int(b16.shape[1]), int(b16.shape[3])
    kp = te.reduce_axis((0, k2), name="k2")
    kk = te.reduce_axis((0, v), name="kk")
    lead = list(a16.shape[:-2])

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, g, lane = idx
        product = a16[(*rest, kp, kk)].astype("int32") * b16[g, kp, lane, kk].astype("int32")
        return te.sum(product, axis=[kp, kk])

    acc = te.compute([*lead, groups, 8], acc_body, name="qmatmul_acc")
    acc = _add_bias_panels(acc, bias) if narrow else acc
    read = lambda rest, j: acc[(*rest, j // 8, j % 8)]  # noqa: E731
    return _requantize(None if narrow else bias, multiplier, shift, out_zero_point, lead, n, read, narrow=narrow)


def _te_quantized_matmul(
    a: te.Tensor, b: te.Tensor, a_zero_point: int, b_zero_point: int, multiplier: int, shift: int, out_zero_point: int
) -> te.Tensor:
    """Generic int32 batch matmul of two int8 activations (batch dims broadcast), requantized per tensor."""
    *batch_a, m, kdim = a.shape
    *batch_b, _, n = b.shape
    batch = _broadcast_dims(list(batch_a), list(batch_b))
    r = te.reduce_axis((0, kdim), name="k")

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *bi, i, j = idx
        x = a[(*_bcast_index(batch_a, bi), i, r)].astype("int32") - _i32(a_zero_point)
        y = b[(*_bcast_index(batch_b, bi), r, j)].astype("int32") - _i32(b_zero_point)
        return te.sum(x * y, axis=r)

    acc = te.compute([*batch, m, n], acc_body, name="qmatmul_acc")
    return _requantize(None, multiplier, shift, out_zero_point, [*batch, m], n, lambda rest, j: acc[(*rest, j)])


def _broadcast_dims(x: list[Any], y: list[Any]) -> list[Any]:
    x, y = [1] * (len(y) - len(x)) + x, [1] * (len(x) - len(y)) + y
    return [q if isinstance(p, int | tirx.IntImm) and int(p) == 1 else p for p, q in zip(x, y, strict=True)]


def _bcast_index(dims: list[Any], index: list[tirx.Var]) -> list[Any]:
    """`index` over the broadcast batch dims, restricted to `dims` (size-1 dims read element 0)."""
    index = index[len(index) - len(dims) :]
    return [0 if isinstance(d, int | tirx.IntImm) and int(d) == 1 else i for d, i in zip(dims, index, strict=True)]


def _te_pack_activation(b: te.Tensor, b_zero_point: int, k2: int) -> te.Tensor:
    """B16[f * N8 + g, k/2, n%8, k%2] = b[batch f, k, n] - b_zp as int16, zero past K and N (per call)."""
    *batch, kdim, n = b.shape
    n8 = (int(n) + 7) // 8

    def body(row: tirx.Var, kp: tirx.Var, lane: tirx.Var, kk: tirx.Var) -> tirx.PrimExpr:
        index, g = _unflatten(row // n8, batch), row % n8
        k, j = kp * 2 + kk, g * 8 + lane
        value = b[(*index, tirx.min(k, kdim - 1), tirx.min(j, n - 1))].astype("int16")
        inside = tirx.all(k < kdim, j < n)
        return tirx.if_then_else(inside, value - tirx.const(b_zero_point, "int16"), tirx.const(0, "int16"))

    return te.compute([_product(batch) * n8, k2, 8, 2], body, name="pack_activation")


def _te_widen_rows(a: te.Tensor, a_zero_point: int, k2: int) -> te.Tensor:
    """A16[f * M + i, k/2, k%2] = a[batch f, i, k] - a_zp as int16, zero past K: one row dim for the GEMM rule."""
    *batch, m, kdim = a.shape

    def body(row: tirx.Var, kp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        k = kp * 2 + j
        index = _unflatten(row // m, batch)
        value = a[(*index, row % m, tirx.min(k, kdim - 1))].astype("int16") - tirx.const(a_zero_point, "int16")
        return tirx.if_then_else(k < kdim, value, tirx.const(0, "int16"))

    return te.compute([_product(batch) * m, k2, 2], body, name="widen_rows")


def _product(dims: list[Any]) -> Any:
    out = 1
    for d in dims:
        out = out * d
    return out


def _unflatten(flat: tirx.PrimExpr, dims: list[Any]) -> list[tirx.PrimExpr]:
    index = []
    for d in reversed(dims):
        index.insert(0, flat % d)
        flat = flat // d
    return index


def _te_quantized_matmul_pmadd(
    a16: te.Tensor,
    b16: te.Tensor,
    multiplier: int,
    shift: int,
    out_zero_point: int,
    m: int,
    n: int,
    narrow: bool = False,
) -> te.Tensor:
    """vpmaddwd GEMM over rows (batch, i) (kernels/int8_avx2.py; B panels per batch), requantized per tensor.

    The rows are one dimension: the GEMM rule fuses several leading loops, and
    tensorizing under a fused loop fails in TVM 0.27 (an int32/int64 iterator).
    """
    rows, k2 = a16.shape[0], a16.shape[1]
    n8 = tirx.const((n + 7) // 8, "int64")
    kp = te.reduce_axis((0, k2), name="k2")
    kk = te.reduce_axis((0, 2), name="kk")

    def acc_body(row: tirx.Var, g: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        a = a16[row, kp, kk].astype("int32")
        return te.sum(a * b16[row // m * n8 + g, kp, lane, kk].astype("int32"), axis=[kp, kk])

    acc = te.compute([rows, n8, 8], acc_body, name="qmatmul_acc")
    read = lambda rest, j: acc[rest[0], j // 8, j % 8]  # noqa: E731
    return _requantize(None, multiplier, shift, out_zero_point, [rows], n, read, narrow=narrow)


def _te_row_params(x: te.Tensor) -> te.Tensor:
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


def _te_row_quantize(x: te.Tensor, params: te.Tensor, v: int, u8: bool) -> te.Tensor:
    """``[M, K/V, V]``: uint8 ``u`` (u8s8) or int16 ``u - zp`` (s16) of each row, zero past K."""
    m, kdim = x.shape
    groups = (int(kdim) + v - 1) // v

    def body(r: tirx.Var, kp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        k = kp * v + j
        q = tirx.nearbyint(x[r, tirx.min(k, kdim - 1)] / params[r, 0]) + params[r, 1]
        u = tirx.min(tirx.max(q, tirx.const(0.0, "float32")), tirx.const(255.0, "float32"))
        dtype = "uint8" if u8 else "int16"
        value = u.astype(dtype) if u8 else (u - params[r, 1]).astype(dtype)
        return tirx.if_then_else(k < kdim, value, tirx.const(0, dtype))

    return te.compute((m, groups, v), body, name="row_quantize")


def _te_dynamic_linear(
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


def _te_dynamic_linear_generic(
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


def _at(v: te.Tensor | int | None, j: tirx.Var) -> tirx.PrimExpr:
    """A per-channel parameter's entry `j` (a tensor), or a per-tensor one (an int), as int64."""
    if isinstance(v, te.Tensor):
        return v[j].astype("int64")
    return tirx.const(int(v or 0), "int64")


def _requantize(
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
            y32 = (high >> (total - tirx.const(32, "int64")).astype("int32")) + _i32(out_zero_point)
            return tirx.max(tirx.min(y32, _i32(127)), _i32(-128)).astype("int8")
        wide = (read(rest, j).astype("int64") + _at(bias, j)) * _at(multiplier, j)
        rounded = (wide + half) >> total
        y = rounded + tirx.const(out_zero_point, "int64")
        return tirx.max(tirx.min(y, tirx.const(127, "int64")), tirx.const(-128, "int64")).astype("int8")

    shape = [lead[0], n, *lead[1:]] if channels_first else [*lead, n]
    return te.compute(shape, requant, name="qconv_requant" if channels_first else "qmatmul_requant")


def _conv_out(size: Any, before: int, after: int, kernel: int, stride: int, dilation: int) -> Any:
    return (size + before + after - (kernel - 1) * dilation - 1) // stride + 1


def _te_quantized_conv2d(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    x_zero_point: int,
    out_zero_point: int,
    attrs: tuple[tuple[int, ...], ...],
    out_channels: int,
) -> te.Tensor:
    """Generic int32 NCHW conv: ``pad(x - x_zp, 0)`` as int16, int32 accumulation, requantize.

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
    return _requantize_nchw(acc, bias, multiplier, shift, out_zero_point, lambda b, f, yy, xx: acc[b, f, yy, xx])


def _te_conv_widen(x: te.Tensor, x_zero_point: int, padding: tuple[int, ...]) -> te.Tensor:
    """P16[n, y, x, c/2, 2] = x - x_zp as int16, NHWC channel pairs, zero in the padding and past C."""
    n, c, h, wd = x.shape
    top, left, bottom, right = padding
    c2 = (int(c) + 1) // 2

    def body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, cp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        ci = cp * 2 + j
        inside = tirx.all(yy >= top, yy < h + top, xx >= left, xx < wd + left, ci < c)
        read = x[b, tirx.min(ci, c - 1), yy - top, xx - left].astype("int16")
        return tirx.if_then_else(inside, read - tirx.const(x_zero_point, "int16"), tirx.const(0, "int16"))

    return te.compute((n, h + top + bottom, wd + left + right, c2, 2), body, name="conv_widen")


def _te_conv_shift_u8(x: te.Tensor, x_zero_point: int, padding: tuple[int, ...]) -> te.Tensor:
    """P8[n, y, x, c/4, 4] = x + 128 as uint8, NHWC channel quads; x_zp + 128 in the padding, zero past C."""
    n, c, h, wd = x.shape
    top, left, bottom, right = padding
    c4 = (int(c) + 3) // 4

    def body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, cp: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        ci = cp * 4 + j
        inside = tirx.all(yy >= top, yy < h + top, xx >= left, xx < wd + left)
        read = x[b, tirx.min(ci, c - 1), yy - top, xx - left].astype("int16")
        value = tirx.if_then_else(inside, read, tirx.const(x_zero_point, "int16")) + tirx.const(128, "int16")
        return tirx.if_then_else(ci < c, value.astype("uint8"), tirx.const(0, "uint8"))

    return te.compute((n, h + top + bottom, wd + left + right, c4, 4), body, name="conv_shift_u8")


def _te_quantized_conv2d_pmadd(
    p16: te.Tensor,
    b16: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    attrs: tuple[tuple[int, ...], ...],
    out_channels: int,
    narrow: bool = False,
) -> te.Tensor:
    """NHWC-group direct conv for vpmaddwd / vpmaddubsw (kernels/int8_conv_avx2.py), requantized into NCHW int8."""
    (sh, sw), _, (dh, dw), _ = attrs
    n, hp, wp = p16.shape[:3]
    o8, kh, kw, c2 = (int(d) for d in b16.shape[:4])
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    cp, kk = te.reduce_axis((0, c2), name="c2"), te.reduce_axis((0, int(b16.shape[5])), name="kk")

    def acc_body(b: tirx.Var, yy: tirx.Var, xx: tirx.Var, g: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        a = p16[b, yy * sh + ry * dh, xx * sw + rx * dw, cp, kk].astype("int32")
        return te.sum(a * b16[g, ry, rx, cp, lane, kk].astype("int32"), axis=[ry, rx, cp, kk])

    shape = (n, _conv_out(hp, 0, 0, kh, sh, dh), _conv_out(wp, 0, 0, kw, sw, dw), o8, 8)
    acc = te.compute(shape, acc_body, name="qconv_acc")
    acc = _add_bias_panels(acc, bias) if narrow else acc
    read = lambda b, f, yy, xx: acc[b, yy, xx, f // 8, f % 8]  # noqa: E731
    bias_after = None if narrow else bias
    return _requantize_nchw(acc, bias_after, multiplier, shift, out_zero_point, read, out_channels, narrow)


def _requantize_nchw(
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
    return _requantize(
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


def _add_bias_panels(acc: te.Tensor, bias: te.Tensor) -> te.Tensor:
    """``acc[.., g, lane] + bias[g, lane]`` in int32, as its own stage (a narrow kernel's first epilogue).

    Stored, the sum reaches the requantization as a plain int32 load, which LLVM
    multiplies with ``vpmuldq``; written inline, TVM's simplifier widens the
    sum's operands to int64 and LLVM emits an emulated 64 x 64 multiply.
    """
    return te.compute(acc.shape, lambda *i: acc[i] + bias[i[-2], i[-1]], name="add_bias")


def _bias_panels(bb: Any, bias: relax.Expr) -> relax.Expr:
    """int32 ``[N/8, 8]`` (zero-padded) bias, laid out like the accumulators of a narrow kernel."""
    bias32 = bb.emit(relax.op.astype(bias, "int32"))
    return bb.emit(relax.op.layout_transform(bias32, lambda j: (j // 8, j % 8), pad_value=0))


def _u8s8_bias(bb: Any, w: relax.Expr, bias: relax.Expr, x_zero_point: int, narrow: bool) -> relax.Expr:
    """``bias - (128 + x_zp) * colsum(w)``: undoes the u8s8 kernels' ``x + 128`` (weights only: lifted).

    int64, or int32 when `narrow` (the converter proved it fits).
    """
    axes = list(range(1, len(w.ty.shape.values)))
    colsum = bb.emit(relax.op.sum(relax.op.astype(w, "int64"), axis=axes))
    offset = relax.const(128 + x_zero_point, "int64")
    shifted = bb.emit(relax.op.subtract(relax.op.astype(bias, "int64"), relax.op.multiply(colsum, offset)))
    return bb.emit(relax.op.astype(shifted, "int32")) if narrow else shifted


def converters(spec: TargetSpec, constants: Mapping[str, torch.Tensor] | None = None) -> dict[str, Converter]:
    """The custom_convert_map for `spec` (panel widths depend on the target).

    `constants` maps the exported program's placeholder names to their values
    (weights); with them, int8 layers whose weights cannot saturate it take the
    u8s8 kernels on AVX2.
    """
    panel = 16
    pmadd = False
    if spec.device == "cpu":
        _, nr, lanes = register_tile(spec.target)
        panel = nr * lanes
        pmadd = has_avx2(spec.target)

    def u8s8(node: Any) -> bool:
        """The int8 weight operand of `node` (args[2]; args[1] of a dynamic linear) is known and safe for vpmaddubsw."""
        arg = node.args[1 if "dynamic" in str(node.target) else 2]
        value = constants.get(arg.name) if constants and hasattr(arg, "name") else None
        return pmadd and U8S8 and value is not None and u8s8_safe(value)

    def narrow(node: Any) -> bool:
        """`node`'s requantization may run in int32 (see `_requantize`): proven on its constant operands."""
        names = [getattr(node.args[i], "name", None) for i in (2, 3, 5)]
        values = [constants.get(n) if constants and n else None for n in names]
        if not pmadd or any(v is None for v in values):
            return False
        weight, bias, shift = (v.to(torch.int64) for v in values)  # type: ignore[union-attr]
        reach = 255 * int(weight.abs().flatten(1).sum(1).max()) if weight.dim() > 1 else 1 << 31
        return int(shift.min()) >= 1 and int(bias.abs().max()) + 2 * reach < (1 << 31)

    def quantize(node: Any, importer: Any) -> relax.Expr:
        x, scale, zero_point, qmin, qmax = importer.retrieve_args(node)
        bb = importer.block_builder
        return bb.emit(
            bb.call_te(
                _te_quantize, x, float(scale), int(zero_point), int(qmin), int(qmax), primfunc_name_hint="quantize"
            )
        )

    def dequantize(node: Any, importer: Any) -> relax.Expr:
        q, scale, zero_point = importer.retrieve_args(node)
        bb = importer.block_builder
        return bb.emit(bb.call_te(_te_dequantize, q, float(scale), int(zero_point), primfunc_name_hint="dequantize"))

    def quantized_linear(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp = importer.retrieve_args(node)
        bb = importer.block_builder
        n = int(w.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        fast, narrow32 = u8s8(node), narrow(node)
        if len(lead) > 1:  # rows flattened, so the GEMM rules see one row loop (they fuse none)
            x2 = bb.emit(relax.op.reshape(x, (-1, k)))
            y = quantized_linear_2d(bb, x2, x_zp, w, bias, multiplier, shift, out_zp, fast, narrow32)
            return bb.emit(relax.op.reshape(y, (*lead, n)))
        return quantized_linear_2d(bb, x, x_zp, w, bias, multiplier, shift, out_zp, fast, narrow32)

    def quantized_linear_2d(
        bb: Any,
        x: relax.Expr,
        x_zp: Any,
        w: relax.Expr,
        bias: Any,
        multiplier: Any,
        shift: Any,
        out_zp: Any,
        fast: bool,
        narrow32: bool,
    ) -> relax.Expr:
        n = int(w.ty.shape.values[0])
        if fast:
            k4 = (int(w.ty.shape.values[1]) + 3) // 4
            b8 = bb.emit(relax.op.layout_transform(w, lambda o, i: (o // 8, i // 4, o % 8, i % 4), pad_value=0))
            a8 = bb.emit(bb.call_te(_te_shift_u8, x, k4, primfunc_name_hint="shift_u8"))
            shifted = _u8s8_bias(bb, w, bias, int(x_zp), narrow32)
            shifted = _bias_panels(bb, shifted) if narrow32 else shifted
            args = (a8, b8, shifted, multiplier, shift, int(out_zp), n, narrow32)
            return bb.emit(bb.call_te(_te_quantized_linear_pmadd, *args, primfunc_name_hint="quantized_linear"))
        if pmadd:
            k2 = (int(w.ty.shape.values[1]) + 1) // 2
            b8 = bb.emit(relax.op.layout_transform(w, lambda o, i: (o // 8, i // 2, o % 8, i % 2), pad_value=0))
            b16 = bb.emit(relax.op.astype(b8, "int16"))  # widened once, at compile time
            a16 = bb.emit(bb.call_te(_te_widen, x, int(x_zp), k2, primfunc_name_hint="widen"))
            return bb.emit(
                bb.call_te(
                    _te_quantized_linear_pmadd,
                    a16,
                    b16,
                    _bias_panels(bb, bias) if narrow32 else bias,
                    multiplier,
                    shift,
                    int(out_zp),
                    n,
                    narrow32,
                    primfunc_name_hint="quantized_linear",
                )
            )
        wp = bb.emit(relax.op.layout_transform(w, lambda o, i: (o // panel, i, o % panel), pad_value=0))
        return bb.emit(
            bb.call_te(
                _te_quantized_linear,
                x,
                wp,
                bias,
                multiplier,
                shift,
                int(x_zp),
                int(out_zp),
                n,
                primfunc_name_hint="quantized_linear",
            )
        )

    def quantized_conv2d(node: Any, importer: Any) -> relax.Expr:
        x, x_zp, w, bias, multiplier, shift, out_zp, stride, padding, dilation, groups = importer.retrieve_args(node)
        bb = importer.block_builder
        attrs = (tuple(stride), tuple(padding), tuple(dilation), (int(groups),))
        out_channels = int(w.ty.shape.values[0])
        narrow32 = narrow(node)
        if groups == 1 and u8s8(node):
            b8 = bb.emit(
                relax.op.layout_transform(w, lambda o, i, h, k: (o // 8, h, k, i // 4, o % 8, i % 4), pad_value=0)
            )
            p8 = bb.emit(
                bb.call_te(_te_conv_shift_u8, x, int(x_zp), tuple(padding), primfunc_name_hint="conv_shift_u8")
            )
            shifted = _u8s8_bias(bb, w, bias, int(x_zp), narrow32)
            shifted = _bias_panels(bb, shifted) if narrow32 else shifted
            args = (p8, b8, shifted, multiplier, shift, int(out_zp), attrs, out_channels, narrow32)
            return bb.emit(bb.call_te(_te_quantized_conv2d_pmadd, *args, primfunc_name_hint="quantized_conv2d"))
        if pmadd and groups == 1:
            b8 = bb.emit(
                relax.op.layout_transform(w, lambda o, i, h, k: (o // 8, h, k, i // 2, o % 8, i % 2), pad_value=0)
            )
            b16 = bb.emit(relax.op.astype(b8, "int16"))  # widened and packed once, at compile time
            p16 = bb.emit(bb.call_te(_te_conv_widen, x, int(x_zp), tuple(padding), primfunc_name_hint="conv_widen"))
            bias16 = _bias_panels(bb, bias) if narrow32 else bias
            args = (p16, b16, bias16, multiplier, shift, int(out_zp), attrs, out_channels, narrow32)
            return bb.emit(bb.call_te(_te_quantized_conv2d_pmadd, *args, primfunc_name_hint="quantized_conv2d"))
        if groups == 1 and spec.device == "cpu":  # panels: the conv rule vectorizes over output channels
            w = bb.emit(relax.op.layout_transform(w, lambda o, i, h, k: (o // panel, i, h, k, o % panel), pad_value=0))
        args = (x, w, bias, multiplier, shift, int(x_zp), int(out_zp), attrs, out_channels)
        return bb.emit(bb.call_te(_te_quantized_conv2d, *args, primfunc_name_hint="quantized_conv2d"))

    def quantized_matmul(node: Any, importer: Any) -> relax.Expr:
        a, a_zp, b, b_zp, multiplier, shift, out_zp = importer.retrieve_args(node)
        bb = importer.block_builder
        scalars = (int(multiplier), int(shift), int(out_zp))
        same_batch = [str(d) for d in a.ty.shape.values[:-2]] == [str(d) for d in b.ty.shape.values[:-2]]
        static = all(isinstance(d, tirx.IntImm) for d in (a.ty.shape.values[-1], b.ty.shape.values[-1]))
        if pmadd and same_batch and static:
            *batch, m, kdim = a.ty.shape.values
            k2, n = (int(kdim) + 1) // 2, int(b.ty.shape.values[-1])
            a16 = bb.emit(bb.call_te(_te_widen_rows, a, int(a_zp), k2, primfunc_name_hint="widen"))
            b16 = bb.emit(bb.call_te(_te_pack_activation, b, int(b_zp), k2, primfunc_name_hint="pack_activation"))
            narrow32 = int(shift) >= 1 and 2 * 255 * 255 * int(kdim) < (1 << 31)
            args = (a16, b16, *scalars, m, n, narrow32)
            rows = bb.emit(bb.call_te(_te_quantized_matmul_pmadd, *args, primfunc_name_hint="quantized_matmul"))
            return bb.emit(relax.op.reshape(rows, [*batch, m, n]))
        args = (a, b, int(a_zp), int(b_zp), *scalars)
        return bb.emit(bb.call_te(_te_quantized_matmul, *args, primfunc_name_hint="quantized_matmul"))

    def dynamic_quantized_linear(node: Any, importer: Any) -> relax.Expr:
        x, w, weight_scale, bias = importer.retrieve_args(node)
        bb = importer.block_builder
        n = int(w.ty.shape.values[0])
        *lead, k = x.ty.shape.values
        x2 = bb.emit(relax.op.reshape(x, (-1, k))) if len(lead) != 1 else x
        params = bb.emit(bb.call_te(_te_row_params, x2, primfunc_name_hint="row_params"))
        fast = u8s8(node)
        if fast or pmadd:
            v = 4 if fast else 2
            layout = lambda o, i: (o // 8, i // v, o % 8, i % v)  # noqa: E731
            b = bb.emit(relax.op.layout_transform(w, layout, pad_value=0))
            b = b if fast else bb.emit(relax.op.astype(b, "int16"))
            a = bb.emit(bb.call_te(_te_row_quantize, x2, params, v, fast, primfunc_name_hint="row_quantize"))
            colsum = bb.emit(relax.op.sum(relax.op.astype(w, "int32"), axis=[1])) if fast else None
            args = (a, b, params, colsum, weight_scale, bias, n)
            y = bb.emit(bb.call_te(_te_dynamic_linear, *args, primfunc_name_hint="dynamic_quantized_linear"))
        else:
            a = bb.emit(bb.call_te(_te_row_quantize, x2, params, 1, False, primfunc_name_hint="row_quantize"))
            args = (a, w, weight_scale, bias, params)
            y = bb.emit(bb.call_te(_te_dynamic_linear_generic, *args, primfunc_name_hint="dynamic_quantized_linear"))
        return bb.emit(relax.op.reshape(y, (*lead, n))) if len(lead) != 1 else y

    return {
        "dynamic_quantized_linear.default": dynamic_quantized_linear,
        "quantize.default": quantize,
        "dequantize.default": dequantize,
        "quantized_linear.default": quantized_linear,
        "quantized_conv2d.default": quantized_conv2d,
        "quantized_matmul.default": quantized_matmul,
        "block_sparse_linear.default": convert_block_sparse_linear(spec),
    }
