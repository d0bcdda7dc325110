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

Batched activation x activation matmuls keep the s16 form in 8-lane panels
(``vpdpwssd`` ymm: with 16 lanes an N that is not a multiple of 16 would
leave the epilogue outside the tile, as it does on AVX2 for N % 8), and
``dynamic_quantized_linear`` keeps 8-lane u8s8 panels (te_dynamic.py's
accumulator is 8 lanes wide; ``vpdpbusd`` ymm computes them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from tvm import relax
from tvm.target import Target

from fxpress.backends.tvm.isa.base import Int8Lowering, Int8Weight
from fxpress.backends.tvm.isa.generic import cpu_rules
from fxpress.backends.tvm.isa.x86_avx2 import Avx2ISA
from fxpress.backends.tvm.isa.x86_avx2.int8 import Avx2Int8
from fxpress.backends.tvm.isa.x86_vnni.kernels import CPUInt8Conv2dVNNI, CPUInt8GemmVNNI
from fxpress.backends.tvm.kernels.matmul import register_tile

LANES = 16  # int32 lanes of a zmm accumulator: the panel width of the VNNI linear and conv layouts


class VnniInt8(Avx2Int8):
    """`Avx2Int8` with 16-lane panels and the u8s8 form for every layer (see module doc)."""

    lanes = LANES

    def fast(self, w: Int8Weight) -> bool:
        """Always u8s8 (unless switched off): ``vpdpbusd`` cannot saturate, whatever the weights."""
        return self.u8s8

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
