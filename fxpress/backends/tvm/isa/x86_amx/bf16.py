"""The AMX-BF16 lowering of ``bf16_linear``: ``tdpbf16ps`` tile GEMMs, float32 accumulation.

A static linear with enough work (`worth_amx`, as for int8) runs as

    A = bf16_bits(x) [M, Kp]            # rounded to nearest even, K padded to even with zeros
    Wp = pack(bf16_bits(W)) [N/32, Kp/2, 32, 2]   # lifted: runs once at compile time, stored as bf16 bits
    C = amx_gemm(A, Wp) [M, N] float32  # gemm.py with bf16=True
    y = C + bias                        # one fused element-wise kernel

and anything else (a dynamic row count, a tiny layer) takes the default
`Bf16Lowering` (a float32 GEMM over the rounded values). Both compute the
reference's products exactly; the float32 sums differ in order only. The
stored weight is half the bytes of a float32 one.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx

from fxpress.backends.tvm.isa.base import Bf16Lowering
from fxpress.backends.tvm.isa.x86_amx.gemm import amx_gemm
from fxpress.backends.tvm.isa.x86_amx.int8 import OPAQUE, worth_amx
from fxpress.backends.tvm.isa.x86_amx.layout import BF16_GROUP, bf16_weight_index_map
from fxpress.backends.tvm.te_bf16 import te_bf16_bits


def _bias_add(c: te.Tensor, bias: te.Tensor) -> te.Tensor:
    return te.compute(c.shape, lambda i, j: c[i, j] + bias[j], name="bf16_bias")


class AmxBf16(Bf16Lowering):
    """``tdpbf16ps`` tiles for big static linears; the float32 GEMM (`Bf16Lowering`) for the rest."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def linear(self, bb: Any, x2: relax.Expr, weight: relax.Expr, bias: relax.Expr | None) -> relax.Expr:
        m_dim = x2.ty.shape.values[0]
        m = int(m_dim.value) if isinstance(m_dim, tirx.IntImm) else None
        n, k = (int(d) for d in weight.ty.shape.values)
        if m is None or not worth_amx(m, n, k):
            return super().linear(bb, x2, weight, bias)
        kp = -(-k // BF16_GROUP) * BF16_GROUP
        a = bb.emit(bb.call_te(te_bf16_bits, x2, kp, primfunc_name_hint="bf16_bits"))
        wb = bb.emit(bb.call_te(te_bf16_bits, weight, kp, primfunc_name_hint="bf16_bits"))
        wp = bb.emit(relax.op.layout_transform(wb, bf16_weight_index_map, pad_value=0))
        func = amx_gemm(m, n, kp, threads=self.threads, bf16=True)
        gv = bb.add_func(func.with_attr("tir.is_scheduled", True).with_attr("op_pattern", OPAQUE), "amx_gemm_bf16")
        c = bb.emit(relax.call_tir(gv, [a, wp], relax.TensorType((m, n), "float32")))
        if bias is None:
            return c
        return bb.emit(bb.call_te(_bias_add, c, bias, primfunc_name_hint="bf16_bias"))
