"""What machine and software a benchmark ran on, recorded with its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# The instruction sets that decide which kernels can run here.
_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip
# the flags that decide which fp32 / int8 kernels a CPU can run (AVX2 u8s8, AVX-512, VNNI, AMX): named in the report
KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
_PACKAGES = (
    "torch", "apache-tvm", "apache-tvm-ffi", "onnxruntime", "onnx", "openvino", "nncf", "numpy", "transformers",
)  # fmt: skip
_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _mem_gib() -> float | None:
    try:
        line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 2**20, 1)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _llvm_cpu() -> str | None:
    try:
        import tvm

        return str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception:
        return None


def _git() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, memory, OS, package versions, threading env, git commit."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu_model": cpu.get("model name"),
        "cpu_flags": [f for f in _FLAGS if f in flags],
        "isa_flags": {f: f in flags for f in KEY_FLAGS},
        "llvm_cpu": _llvm_cpu(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": _mem_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in _PACKAGES},
        "env": {k: os.environ[k] for k in _ENV if k in os.environ},
        "git": _git(),
    }


def flags_summary(info: dict[str, Any]) -> str:
    """The recorded instruction-set flags, space-separated."""
    return " ".join(info.get("cpu_flags") or []) or "unknown"


def isa_summary(info: dict[str, Any]) -> str:
    """The key flags as ``avx2 yes, avx512f yes, avx512_vnni no, ...`` (runs recorded before they were kept: derived)."""
    have = info.get("isa_flags") or {f: f in (info.get("cpu_flags") or []) for f in KEY_FLAGS}
    return ", ".join(f"{f} {'yes' if have.get(f) else 'no'}" for f in KEY_FLAGS)
