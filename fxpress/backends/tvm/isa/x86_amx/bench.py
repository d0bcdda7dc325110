"""Microbenchmark of the AMX int8 GEMM on this machine: exactness, time, GOP/s, fraction of peak.

    .venv/bin/python -m fxpress.backends.tvm.isa.x86_amx.bench            # 128x384x1536, 1024^3
    .venv/bin/python -m fxpress.backends.tvm.isa.x86_amx.bench 49x4608x512 --threads 2

Shapes are M x K x N. Peak: one core's AMX unit does 1024 int8
multiply-adds per cycle (a 16x16x64 ``tdpbusd`` every 16 cycles), i.e.
``2048 * GHz`` GOP/s. The clock is the ``cpu MHz`` of /proc/cpuinfo: under
KVM that is the nominal (TSC) rate the hypervisor reports, not a measured
turbo clock, so the fraction is relative to the nominal clock and can exceed
what the core really runs at. The reference result is computed in float64
BLAS, which is exact here (every product and partial sum is an integer below
2^53 while K < 2^37), then compared bit for bit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from fxpress.backends.tvm.isa.x86_amx import tiles
from fxpress.backends.tvm.isa.x86_amx.gemm import amx_gemm
from fxpress.backends.tvm.isa.x86_amx.layout import pack_weight
from fxpress.errors import BackendError, TargetError
from fxpress.runtime import set_num_threads
from fxpress.runtime.amx import request_amx_permission
from fxpress.runtime.cpu import host_cpu_flags, host_cpu_model

AMX_INT8_FLAGS = ("amx_tile", "amx_int8")
MACS_PER_CYCLE = 1024  # int8 multiply-adds per cycle per core (AMX-INT8)
DEFAULT_SHAPES = ((128, 384, 1536), (1024, 1024, 1024))  # (M, K, N)


def amx_host_target(threads: int = 1) -> tvm.target.Target:
    """An LLVM target for this CPU with the AMX features named explicitly.

    ``llvm_get_system_cpu`` goes by the CPU model number, which a hypervisor
    may fake (this 2-core KVM guest reports ``rocketlake``, a CPU without
    AMX), so the tile intrinsics would not compile without ``+amx-tile``.
    """
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "mattr": list(tiles.AMX_MATTR), "num-cores": threads})


def missing_amx_flags() -> list[str]:
    """The AMX int8 flags /proc/cpuinfo does not list (empty: the host can run the kernel)."""
    have = host_cpu_flags()
    return [f for f in AMX_INT8_FLAGS if f not in have]


def cpu_ghz() -> tuple[float, str]:
    """The core clock in GHz and where it was read (the first ``cpu MHz`` line of /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000.0, "/proc/cpuinfo 'cpu MHz' (nominal under KVM)"
    except (OSError, ValueError):
        pass
    return float("nan"), "unknown (no 'cpu MHz' in /proc/cpuinfo)"


def _operands(m: int, k: int, n: int, signed_a: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8) if signed_a else rng.integers(0, 256, (m, k), dtype=np.uint8)
    return a, rng.integers(-128, 128, (n, k), dtype=np.int8)


def _exact_reference(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w.T`` in int32, through float64 BLAS (exact: see the module doc)."""
    return (a.astype(np.float64) @ w.astype(np.float64).T).astype(np.int32)


def microbench(
    m: int, k: int, n: int, threads: int = 1, repeat: int = 7, *, signed_a: bool = False, min_repeat_ms: int = 100
) -> dict[str, Any]:
    """Compile the AMX GEMM for this host, check it bit-exact, and time it (`repeat` samples).

    Returns the shape, ``ms`` (median) and ``best_ms``, ``gops`` / ``best_gops``
    (2*M*N*K ops), ``ghz`` and its source, ``peak_gops`` and ``fraction_of_peak``
    (from the median). Raises `TargetError` when the host lacks AMX and
    `BackendError` when the result is not exact.
    """
    missing = missing_amx_flags()
    if missing:
        raise TargetError(f"this CPU lacks {missing} in /proc/cpuinfo: the AMX GEMM cannot run here")
    request_amx_permission()
    func = amx_gemm(m, n, k, threads=threads, signed_a=signed_a)
    name = str(func.attrs["global_symbol"])
    lib = tvm.compile(tvm.IRModule({name: func}), target=amx_host_target(threads))
    set_num_threads(threads)
    dev = tvm.cpu()
    a, w = _operands(m, k, n, signed_a, seed=0)
    args = [tvm.runtime.tensor(x, dev) for x in (a, pack_weight(w), np.zeros((m, n), np.int32))]
    lib[name](*args)
    if not np.array_equal(args[2].numpy(), _exact_reference(a, w)):
        raise BackendError(f"{name}: the AMX GEMM's result differs from the integer reference")
    timer = lib.mod.time_evaluator(name, dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    results = np.array(timer(*args).results)
    ops = 2.0 * m * n * k
    ghz, source = cpu_ghz()
    peak = 2 * MACS_PER_CYCLE * ghz * threads
    med, best = float(np.median(results)), float(results.min())
    return {
        "m": m,
        "k": k,
        "n": n,
        "threads": threads,
        "symbol": name,
        "exact": True,
        "ms": med * 1e3,
        "best_ms": best * 1e3,
        "gops": ops / med / 1e9,
        "best_gops": ops / best / 1e9,
        "ghz": ghz,
        "ghz_source": source,
        "peak_gops": peak,
        "fraction_of_peak": ops / med / 1e9 / peak,
        "cpu": host_cpu_model(),
    }


def _shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MxKxN, got {text!r}") from None
    return m, k, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", type=_shape, help="MxKxN (default: 128x384x1536 1024x1024x1024)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--signed-a", action="store_true", help="int8 A (tdpbssd) instead of uint8 (tdpbusd)")
    args = parser.parse_args(argv)
    for m, k, n in args.shapes or DEFAULT_SHAPES:
        r = microbench(m, k, n, args.threads, args.repeat, signed_a=args.signed_a)
        print(
            f"{m}x{k}x{n} threads={r['threads']} exact: {r['ms']:.4f} ms median, {r['gops']:.0f} GOP/s "
            f"(best {r['best_gops']:.0f}), {100 * r['fraction_of_peak']:.0f}% of {r['peak_gops']:.0f} GOP/s peak",
            flush=True,
        )
    ghz, source = cpu_ghz()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpu: {host_cpu_model()}, {ghz:.2f} GHz from {source}; 1-minute load average {load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
