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
is its fused epilogue. On AVX2 CPUs the converter emits the vpmaddwd form
instead (int16-widened operands, see kernels/int8_avx2.py), which is exact and
about 4x faster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import relax, te, tirx

from fxpress.backends.tvm.block_sparse import convert_block_sparse_linear
from fxpress.backends.tvm.kernels.int8_avx2 import has_avx2
from fxpress.backends.tvm.kernels.matmul import register_tile
from fxpress.backends.tvm.targets import TargetSpec

Converter = Callable[[Any, Any], relax.Expr]


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


def _te_quantized_linear_pmadd(
    a16: te.Tensor,
    b16: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    n: int,
) -> te.Tensor:
    groups, k2 = int(b16.shape[0]), int(b16.shape[1])
    kp = te.reduce_axis((0, k2), name="k2")
    kk = te.reduce_axis((0, 2), name="kk")
    lead = list(a16.shape[:-2])

    def acc_body(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, g, lane = idx
        return te.sum(a16[(*rest, kp, kk)].astype("int32") * b16[g, kp, lane, kk].astype("int32"), axis=[kp, kk])

    acc = te.compute([*lead, groups, 8], acc_body, name="qmatmul_acc")
    return _requantize(bias, multiplier, shift, out_zero_point, lead, n, lambda rest, j: acc[(*rest, j // 8, j % 8)])


def _requantize(
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    out_zero_point: int,
    lead: list[Any],
    n: int,
    read: Callable[[list[tirx.Var], tirx.Var], tirx.PrimExpr],
) -> te.Tensor:
    """int8 output ``[*lead, n]`` requantized from the int32 accumulator that `read` indexes."""

    def requant(*idx: tirx.Var) -> tirx.PrimExpr:
        *rest, j = idx
        total = shift[j].astype("int64") + tirx.const(31, "int64")
        wide = (read(rest, j) + bias[j]).astype("int64") * multiplier[j].astype("int64")
        rounded = (wide + (tirx.const(1, "int64") << (total - tirx.const(1, "int64")))) >> total
        y = rounded + tirx.const(out_zero_point, "int64")
        return tirx.max(tirx.min(y, tirx.const(127, "int64")), tirx.const(-128, "int64")).astype("int8")

    return te.compute([*lead, n], requant, name="qmatmul_requant")


def converters(spec: TargetSpec) -> dict[str, Converter]:
    """The custom_convert_map for `spec` (panel widths depend on the target)."""
    panel = 16
    pmadd = False
    if spec.device == "cpu":
        _, nr, lanes = register_tile(spec.target)
        panel = nr * lanes
        pmadd = has_avx2(spec.target)

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
                    bias,
                    multiplier,
                    shift,
                    int(out_zp),
                    n,
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

    return {
        "quantize.default": quantize,
        "dequantize.default": dequantize,
        "quantized_linear.default": quantized_linear,
        "block_sparse_linear.default": convert_block_sparse_linear(spec),
    }
