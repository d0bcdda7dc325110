"""Compilation targets: named presets, host CPU feature detection, checks.

A preset names what to build for. ``x86`` is the host CPU as LLVM sees it
(``llvm_get_system_cpu``); the other x86 presets pin an instruction set. A
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

from fxpress.errors import TargetError
from fxpress.runtime.cpu import host_cpu_flags


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target, what it needs, and where it runs."""

    name: str
    target: tvm.target.Target
    device: str  # "cpu" or "cuda"
    host_runnable: bool
    requires: tuple[str, ...] = ()  # /proc/cpuinfo flags the code needs
    cross_compiler: str | None = None
    options: dict[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "target": str(self.target), "device": self.device, "requires": list(self.requires)}


def _llvm(mcpu: str, threads: int, **extra: object) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": threads, **extra})


# name -> (mcpu or None for the host, required cpu flags, description)
_X86: dict[str, tuple[str | None, tuple[str, ...], str]] = {
    "x86": (None, (), "this machine's CPU, every instruction set it has"),
    "x86-avx2": ("haswell", ("avx2", "fma"), "x86-64 with AVX2 and FMA"),
    "x86-avx512": ("skylake-avx512", ("avx512f", "avx512bw"), "x86-64 with AVX-512"),
    "x86-vnni": ("cascadelake", ("avx512f", "avx512_vnni"), "x86-64 with AVX-512 VNNI"),
    "x86-amx": ("sapphirerapids", ("avx512f", "avx512_vnni", "amx_int8", "amx_tile"), "x86-64 with AMX-INT8"),
}
_OTHER = {
    "arm": "aarch64 Linux with NEON and dot-product (cross build)",
    "cuda": "NVIDIA GPU, sm_90 (cross build; runs where a GPU is)",
}
TARGETS: dict[str, str] = {**{k: v[2] for k, v in _X86.items()}, **_OTHER}

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
        return TargetSpec(name, target, "cpu", False, cross_compiler="aarch64-linux-gnu-gcc")
    if name == "cuda":
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host=_llvm("x86-64", threads))
        return TargetSpec(name, target, "cuda", False)
    mcpu, needs, _ = _X86[name]
    missing = [f for f in needs if f not in host_cpu_flags()]
    if missing and not cross:
        raise TargetError(
            f"target {name!r} needs CPU features {missing} that this machine lacks; "
            f"use target 'x86' (the host's own features) or pass cross=True to build for another machine"
        )
    if mcpu is None:  # the host's own CPU: the code may use every instruction set it has
        needs = tuple(sorted(host_cpu_flags() & _ISA_FLAGS))
    cpu = mcpu or tvm.target.codegen.llvm_get_system_cpu()
    return TargetSpec(name, _llvm(cpu, threads), "cpu", not missing, requires=needs)
