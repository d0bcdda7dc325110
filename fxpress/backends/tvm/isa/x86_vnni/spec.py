"""The VNNI ISA: AVX-512 with ``vpdpbusd`` (u8 x s8 dot products of four into int32 lanes, no saturation)."""

from __future__ import annotations

from fxpress.backends.tvm.isa.x86_vnni.int8 import VnniISA

VNNI = VnniISA(
    "x86-vnni",
    "x86-64 with AVX-512 VNNI",
    "x86_64",
    "cascadelake",
    ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"),
    512,
    channels_last_int8=True,
)
