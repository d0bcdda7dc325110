"""The VNNI int8 lowering and rules: every int8 layer u8s8 over 16-lane panels, for ``vpdpbusd`` in zmm.

What changes from the AVX2 lowering (isa/x86_avx2/int8.py, `Avx2Int8`),
which this subclasses:

- **every** linear and groups=1 conv takes the u8s8 form (``x + 128`` as
  uint8 quads, int8 weights, ``bias - (128 + x_zp) * colsum(w)``):
  ``vpdpbusd`` adds the four u8 x s8 products in int32, so nothing can
  saturate and no weight check (`u8s8_safe`) is needed; weights need not even
  be constant (the colsum is then computed per call);
- panels are L = 16 wide: weights ``[N/16, K/4, 16, 4]`` (linear),
  ``[O/16, KH, KW, C/4, 16, 4]`` (conv), narrow biases ``[N/16, 16]``; the
  TE builders read L from the weights' shape, so the calls are the AVX2 ones;
- the schedule rules are `CPUInt8GemmVNNI` / `CPUInt8Conv2dVNNI`
  (kernels.py), before the generic ones.

Batched activation x activation matmuls (attention) take the u8s8 form too
when N % 16 == 0 and the shapes past the batch are static (te_matmul.py: ``a
+ 128`` as uint8 quads, ``b`` packed per call into int8 16-lane panels, the
shift and both zero points undone by a per-row and a per-column correction
computed at run time). Otherwise they keep the s16 form in 8-lane panels
(``vpdpwssd`` ymm: with 16 lanes an N that is not a multiple of 16 would
leave the epilogue outside the tile, as it does on AVX2 for N % 8), and so
does a K too deep for the corrections to fit int32. A symbolic batch takes
the u8s8 form with a rows output and a reshape, as the s16 form does.
Block-sparse int8 linears (16- or 8-row blocks) take ``vpdpbusd`` on quads
of kept columns (`sparse_int8`; kernels/bsr_int8.py, sparse.py).
``dynamic_quantized_linear`` keeps 8-lane u8s8 panels (te_dynamic.py's
accumulator is 8 lanes wide; ``vpdpbusd`` ymm computes them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from tvm import relax, tirx
from tvm.target import Target

from fxpress.backends.tvm.isa.base import Int8Lowering, Int8Weight, SparseInt8
from fxpress.backends.tvm.isa.generic import cpu_rules
from fxpress.backends.tvm.isa.x86_avx2 import Avx2ISA
from fxpress.backends.tvm.isa.x86_avx2.int8 import Avx2Int8
from fxpress.backends.tvm.isa.x86_vnni.kernels import CPUInt8Conv2dVNNI, CPUInt8GemmVNNI
from fxpress.backends.tvm.isa.x86_vnni.sparse import SPARSE_VPDPBUSD_8, SPARSE_VPDPBUSD_16
from fxpress.backends.tvm.isa.x86_vnni.te_matmul import (
    GROUP,
    fits_int32,
    te_col_fix,
    te_pack_activation_u8,
    te_quantized_matmul_u8s8,
    te_row_fix,
    te_shift_rows_u8,
)
from fxpress.backends.tvm.kernels.matmul import register_tile

LANES = 16  # int32 lanes of a zmm accumulator: the panel width of the VNNI linear and conv layouts
# padded column density up to which the int8 BSR kernel beats the dense VNNI GEMM: Linear(768, 3072) at
# batch 128, 1 thread, VM main: 1.61x at 0.35, 1.24x at 0.46, 1.02x at 0.56 (tools/bench/sparsity.py, this Xeon)
SPARSE_MAX_DENSITY = 0.45


class VnniInt8(Avx2Int8):
    """`Avx2Int8` with 16-lane panels and the u8s8 form for every layer (see module doc)."""

    lanes = LANES

    def fast(self, w: Int8Weight) -> bool:
        """Always u8s8 (unless switched off): ``vpdpbusd`` cannot saturate, whatever the weights."""
        return self.u8s8

    # measured (tools/bench/sparsity.py): the int8 BSR kernel against this lowering's dense VNNI GEMM
    sparse_max_density = SPARSE_MAX_DENSITY

    def sparse_int8(self, rows: int) -> SparseInt8 | None:
        """``vpdpbusd`` quads (sparse.py) for blocks of 16 rows (zmm) or 8 (ymm); u8s8 like every VNNI layer."""
        lanes = 16 if rows % 16 == 0 else 8 if rows % 8 == 0 else 0
        if not self.u8s8 or not lanes:
            return None
        return SparseInt8(SPARSE_VPDPBUSD_16 if lanes == 16 else SPARSE_VPDPBUSD_8, lanes, self.sparse_max_density)

    def matmul(
        self, bb: Any, a: relax.Expr, a_zp: int, b: relax.Expr, b_zp: int, scalars: tuple[int, int, int], scale: Any
    ) -> relax.Expr:
        """u8s8 16-lane ``vpdpbusd`` (te_matmul.py) where N % 16 == 0 and M, K, N are static; else `Avx2Int8`'s s16."""
        a_shape, b_shape = a.ty.shape.values, b.ty.shape.values
        same_batch = [str(d) for d in a_shape[:-2]] == [str(d) for d in b_shape[:-2]]
        m, kdim, n = a_shape[-2], a_shape[-1], b_shape[-1]
        static = all(isinstance(d, tirx.IntImm) for d in (m, kdim, n))
        if not (self.u8s8 and same_batch and static and int(n) % LANES == 0 and fits_int32(int(kdim))):
            return super().matmul(bb, a, a_zp, b, b_zp, scalars, scale)
        batch = list(a_shape[:-2])
        k4, c = (int(kdim) + GROUP - 1) // GROUP, 128 + int(a_zp)
        u = bb.emit(bb.call_te(te_shift_rows_u8, a, k4, primfunc_name_hint="shift_rows_u8"))
        b8 = bb.emit(bb.call_te(te_pack_activation_u8, b, k4, LANES, primfunc_name_hint="pack_activation_u8"))
        row_fix = bb.emit(bb.call_te(te_row_fix, a, int(b_zp), primfunc_name_hint="row_fix")) if b_zp else None
        col_fix = None
        if c:
            col_fix = bb.emit(bb.call_te(te_col_fix, b, int(a_zp), int(b_zp), LANES, primfunc_name_hint="col_fix"))
        # the corrected accumulator is the exact int32 sum, bounded as in the s16 form
        narrow32 = int(scalars[1]) >= 1 and 2 * 255 * 255 * int(kdim) < (1 << 31)
        static_batch = all(isinstance(d, tirx.IntImm) for d in batch)
        args = (u, b8, row_fix, col_fix, *scalars, batch if static_batch else None, m, int(n), narrow32, scale)
        out = bb.emit(bb.call_te(te_quantized_matmul_u8s8, *args, primfunc_name_hint="quantized_matmul"))
        # a symbolic batch: rows out, then a reshape (see Avx2Int8.matmul)
        return out if static_batch else bb.emit(relax.op.reshape(out, [*batch, m, n]))

    def dynamic_linear(self, bb: Any, x2: relax.Expr, w: Int8Weight, weight_scale: Any, bias: Any) -> relax.Expr:
        eight = copy.copy(self)
        eight.lanes = 8  # te_dynamic_linear's accumulator is [M, N/8, 8]
        return Avx2Int8.dynamic_linear(eight, bb, x2, w, weight_scale, bias)


@dataclass(frozen=True)
class VnniISA(Avx2ISA):
    """An ISA whose int8 layers take the VNNI kernels (`VnniInt8`, `CPUInt8GemmVNNI`, `CPUInt8Conv2dVNNI`)."""

    def int8_lowering(self, target: Target) -> Int8Lowering:
        _, nr, lanes = register_tile(target)
        return VnniInt8(nr * lanes, u8s8=self.u8s8)

    def schedule_rules(self) -> list[Any]:
        return [CPUInt8GemmVNNI(), CPUInt8Conv2dVNNI(), *cpu_rules()]
