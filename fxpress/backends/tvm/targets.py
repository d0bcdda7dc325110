"""Compilation targets: named presets, each resolved once to an ISA (isa/), host checks.

A preset names what to build for and resolves to one `ISA`, which owns the
kernels, layouts and int8 lowering (nothing else tests CPU flags). ``x86``
is the host CPU as LLVM sees it (``llvm_get_system_cpu``) with the strongest
ISA the host has (`best_x86_isa`); the other x86 presets pin one ISA and the
LLVM cpu that goes with it (``x86-64`` is the generic baseline). A
preset asking for an instruction set the host lacks is refused when the build
is meant to run here (``cross=False``, the default), so a missing instruction
is a clear compile-time error, never an illegal-instruction crash at run
time; likewise an ``x86`` build records the host's instruction sets, and
loading it on a CPU that lacks one is refused. ``arm`` and ``cuda`` always
build for use elsewhere (cross builds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import tvm

from fxpress.backends.tvm.isa import ISA, ISAS, X86_ISAS, best_x86_isa
from fxpress.errors import TargetError
from fxpress.runtime.cpu import host_cpu_flags


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target, what it needs, and where it runs."""

    name: str
    target: tvm.target.Target
    device: str  # "cpu" or "cuda"
    host_runnable: bool
    isa: ISA
    requires: tuple[str, ...] = ()  # /proc/cpuinfo flags the code needs
    cross_compiler: str | None = None
    options: dict[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": str(self.target),
            "device": self.device,
            "isa": self.isa.name,
            "vector_bits": self.isa.vector_bits,
            "requires": list(self.requires),
        }


def _llvm(mcpu: str, threads: int, **extra: object) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": threads, **extra})


TARGETS: dict[str, str] = {
    "x86": "this machine's CPU, every instruction set it has (the strongest ISA among the x86 ones)",
    **{isa.name: isa.description for isa in reversed(X86_ISAS)},
    "arm": ISAS["arm"].description,
    "cuda": ISAS["cuda"].description,
}

# instruction sets LLVM may use when it compiles for the host CPU (target "x86"); such a
# build requires those the host has, so loading it on a CPU without one is refused
_ISA_FLAGS = frozenset(
    {
        "sse4_1",
        "sse4_2",
        "popcnt",
        "abm",
        "movbe",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi1",
        "bmi2",
        "avx_vnni",
        "avx512f",
        "avx512bw",
        "avx512cd",
        "avx512dq",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx512vbmi",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    }
)


# /proc/cpuinfo flag -> LLVM feature, for the instruction sets newer than some CPUs LLVM may name the host
# (a VM can report an older model, e.g. Rocket Lake, with Sapphire Rapids' AMX): the "x86" preset adds
# those the host has, so its kernels can use them whatever llvm_get_system_cpu answers
_LLVM_FEATURES = {
    "avx512_vnni": "+avx512vnni",
    "avx_vnni": "+avxvnni",
    "avx512_bf16": "+avx512bf16",
    "avx512_fp16": "+avx512fp16",
    "amx_tile": "+amx-tile",
    "amx_int8": "+amx-int8",
    "amx_bf16": "+amx-bf16",
}


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def resolve_target(name: str, *, num_threads: int | None = None, cross: bool = False) -> TargetSpec:
    """The `TargetSpec` for preset `name`; `TargetError` lists the valid names."""
    if not isinstance(name, str) or name not in TARGETS:
        valid = ", ".join(TARGETS)
        raise TargetError(f"unknown target {name!r}; valid targets: {valid}")
    threads = num_threads or default_threads()
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise TargetError(f"num_threads must be a positive int, got {num_threads!r}")
    if name == "arm":
        target = tvm.target.Target(
            {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"], "num-cores": threads}
        )
        return TargetSpec(name, target, "cpu", False, ISAS["arm"], cross_compiler="aarch64-linux-gnu-gcc")
    if name == "cuda":
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host=_llvm("x86-64", threads))
        return TargetSpec(name, target, "cuda", False, ISAS["cuda"])
    host = host_cpu_flags()
    if name == "x86":  # the host's own CPU: the code may use every instruction set it has
        isa = best_x86_isa(host)
        cpu = tvm.target.codegen.llvm_get_system_cpu()
        mattr = [feature for flag, feature in _LLVM_FEATURES.items() if flag in host]
        target = _llvm(cpu, threads, **({"mattr": mattr} if mattr else {}))
        return TargetSpec(name, target, "cpu", True, isa, requires=tuple(sorted(host & _ISA_FLAGS)))
    isa = ISAS[name]
    missing = [f for f in isa.requires if f not in host]
    if missing and not cross:
        raise TargetError(
            f"target {name!r} needs CPU features {missing} that this machine lacks; "
            f"use target 'x86' (the host's own features) or pass cross=True to build for another machine"
        )
    return TargetSpec(name, _llvm(str(isa.mcpu), threads), "cpu", not missing, isa, requires=isa.requires)
