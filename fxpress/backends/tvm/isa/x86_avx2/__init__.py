"""x86 with AVX2 and FMA: exact int8 through ``vpmaddubsw`` / ``vpmaddwd``, 8-lane fp32.

Owns the int8 lowering of int8.py (layouts and packing), the int8 GEMM and
direct-conv rules (kernels/int8_avx2.py, kernels/int8_conv_avx2.py, whose
micro-kernels are its intrinsics), and the channels-last rewrite of int8
convs (its direct conv reads and writes NHWC). The AVX-512 ISA reuses all of
it with 16-lane float schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm.target import Target

from fxpress.backends.tvm.isa.base import ISA, Int8Lowering
from fxpress.backends.tvm.isa.generic import cpu_rules
from fxpress.backends.tvm.isa.x86_avx2.int8 import Avx2Int8
from fxpress.backends.tvm.kernels import CPUInt8Conv2dAVX2, CPUInt8MatmulAVX2
from fxpress.backends.tvm.kernels.matmul import register_tile


@dataclass(frozen=True)
class Avx2ISA(ISA):
    """AVX2 int8 kernels before the generic rules; `u8s8` False keeps every layer in the s16 form."""

    u8s8: bool = True

    def int8_lowering(self, target: Target) -> Int8Lowering:
        _, nr, lanes = register_tile(target)
        return Avx2Int8(nr * lanes, u8s8=self.u8s8)

    def schedule_rules(self) -> list[Any]:
        return [CPUInt8MatmulAVX2(), CPUInt8Conv2dAVX2(), *cpu_rules()]


AVX2 = Avx2ISA(
    "x86-avx2",
    "x86-64 with AVX2 and FMA",
    "x86_64",
    "haswell",
    ("avx2", "fma"),
    256,
    channels_last_int8=True,
    int8_prefers_7bit=True,
)
AVX512 = Avx2ISA(
    "x86-avx512",
    "x86-64 with AVX-512 (16-lane fp32; int8 through the AVX2 kernels)",
    "x86_64",
    "skylake-avx512",
    ("avx2", "fma", "avx512f", "avx512bw"),
    512,
    channels_last_int8=True,
    int8_prefers_7bit=True,
)
