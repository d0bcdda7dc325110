"""The ISA layer: one module or folder per instruction set, and the registry that names them.

A target preset (targets.py) resolves to exactly one `ISA` (base.py). The
x86 ones, weakest first:

| ISA | needs | int8 | fp32 |
|---|---|---|---|
| ``x86-64`` (generic.py) | nothing | generic int32 GEMM / conv | 4-lane generic schedules |
| ``x86-avx2`` (x86_avx2/) | avx2, fma | ``vpmaddubsw`` / ``vpmaddwd`` | 8-lane |
| ``x86-avx512`` (x86_avx2/) | avx512f, avx512bw | as AVX2 | 16-lane |
| ``x86-vnni`` (x86_vnni/) | + avx512_vnni | ``vpdpbusd`` | 16-lane |
| ``x86-amx`` (x86_amx/) | + amx_int8, amx_bf16, amx_tile | ``tdpbusd`` tiles, VNNI for small shapes | 16-lane; bf16 layers on ``tdpbf16ps`` tiles |

`best_x86_isa(flags)` is what the ``x86`` preset takes: the strongest ISA
whose flags the host has. ``arm`` and ``cuda`` have one ISA each.
"""

from __future__ import annotations

from collections.abc import Iterable

from fxpress.backends.tvm.isa.base import ISA, Bf16Lowering, Conv, ConvAttrs, Int8Lowering, Int8Weight, Requant
from fxpress.backends.tvm.isa.generic import ARM, CUDA, X86_64
from fxpress.backends.tvm.isa.x86_amx.spec import AMX
from fxpress.backends.tvm.isa.x86_avx2 import AVX2, AVX512
from fxpress.backends.tvm.isa.x86_vnni.spec import VNNI

X86_ISAS: tuple[ISA, ...] = (AMX, VNNI, AVX512, AVX2, X86_64)  # strongest first
ISAS: dict[str, ISA] = {isa.name: isa for isa in (*X86_ISAS, ARM, CUDA)}


def best_x86_isa(flags: Iterable[str]) -> ISA:
    """The strongest x86 ISA whose required CPU flags are all in `flags`."""
    have = set(flags)
    return next(isa for isa in X86_ISAS if set(isa.requires) <= have)


__all__ = [
    "ISA",
    "ISAS",
    "X86_ISAS",
    "Bf16Lowering",
    "Conv",
    "ConvAttrs",
    "Int8Lowering",
    "Int8Weight",
    "Requant",
    "best_x86_isa",
]
