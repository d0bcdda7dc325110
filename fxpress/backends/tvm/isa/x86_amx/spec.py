"""The AMX ISA: ``tdpbusd`` tile GEMMs where shapes allow, the VNNI kernels for the rest."""

from __future__ import annotations

from fxpress.backends.tvm.isa.x86_avx2 import Avx2ISA

AMX = Avx2ISA(
    "x86-amx",
    "x86-64 with AMX-INT8",
    "x86_64",
    "sapphirerapids",
    ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"),
    512,
    channels_last_int8=True,
)
