"""The AMX ISA: ``tdpbusd`` tile GEMMs where shapes allow, the VNNI kernels for the rest; bf16 on ``tdpbf16ps``.

Its code needs the process's AMX tile-data permission from Linux
(fxpress/runtime/amx.py): `prepare_runtime` asks once, before a compiled
module first runs; a refusal is an `AMXPermissionError` that says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target

from fxpress.backends.tvm.isa.base import Bf16Lowering, Int8Lowering
from fxpress.backends.tvm.isa.x86_amx.bf16 import AmxBf16
from fxpress.backends.tvm.isa.x86_amx.int8 import AmxInt8
from fxpress.backends.tvm.isa.x86_vnni.int8 import VnniISA
from fxpress.backends.tvm.kernels.matmul import register_tile
from fxpress.runtime.amx import request_amx_permission


@dataclass(frozen=True)
class AmxISA(VnniISA):
    """VNNI's rules and lowering, with big static linears and convs on AMX tiles (`AmxInt8`)."""

    def int8_lowering(self, target: Target) -> Int8Lowering:
        _, nr, lanes = register_tile(target)
        return AmxInt8(nr * lanes, threads=int(target.attrs.get("num-cores", 1)), u8s8=self.u8s8)

    def bf16_lowering(self, target: Target) -> Bf16Lowering:
        return AmxBf16(threads=int(target.attrs.get("num-cores", 1)))

    def prepare_runtime(self) -> None:
        request_amx_permission()


AMX = AmxISA(
    "x86-amx",
    "x86-64 with AMX-INT8 and AMX-BF16",
    "x86_64",
    "sapphirerapids",
    ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_bf16", "amx_tile"),
    512,
    channels_last_int8=True,
)
