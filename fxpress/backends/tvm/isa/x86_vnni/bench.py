"""Micro-benchmark of the VNNI int8 GEMM: the real TE and rule, built for this CPU, checked, timed.

Builds ``C[M, N] = A[M, K] (uint8) x W[N, K]^T (int8)`` in int32 exactly as
the compiler would: the u8s8 accumulation block of te_gemm.py's
`te_panel_acc` (weights packed ``[N/L, K/4, L, 4]``), scheduled by
`CPUInt8GemmVNNI` (kernels/int8_avx2.py's rule with the VNNI micro-kernels),
an epilogue that unpacks the panels into ``[M, N]``, compiled with
``tvm.compile`` for the host CPU. The result is compared with torch's integer
matmul (bit-exact or it raises) and timed.

Peak: ``vpdpbusd`` does L lanes x 4 multiply-adds, two instructions a cycle
on the two 512-bit FMA ports of a server core, so at L = 16 (zmm) a core
peaks at 128 MAC (256 ops) a cycle: ``256 * GHz`` GOP/s. GHz is measured (`measure_ghz`:
a dependent multiply-add chain), since /proc/cpuinfo under a hypervisor
reports the TSC rate; the fraction of the peak is relative to that clock
(an upper bound: a core may clock down under 512-bit load).

    .venv/bin/python -m fxpress.backends.tvm.isa.x86_vnni.bench [--threads T] [--lanes L] [M K N ...]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from tvm import te
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_cpu

from fxpress.backends.tvm.isa.x86_vnni.kernels import VNNI_KERNELS, CPUInt8GemmVNNI
from fxpress.backends.tvm.kernels.int8_avx2 import MicroKernels
from fxpress.backends.tvm.te_gemm import te_panel_acc

SHAPES = ((128, 384, 1536), (1024, 1024, 1024))


def host_target(threads: int = 1, mcpu: str | None = None) -> Target:
    """An LLVM target for this CPU (or `mcpu`) with `threads` cores."""
    return Target({"kind": "llvm", "mcpu": mcpu or llvm_get_system_cpu(), "num-cores": threads})


def pack_gemm_weights(w: torch.Tensor, lanes: int, v: int = 4) -> torch.Tensor:
    """int8 ``[N, K]`` as ``[N/L, K/V, L, V]`` panels, zero-padded (what the converter's layout_transform makes)."""
    n, k = w.shape
    n_pad, k_pad = -n % lanes, -k % v
    padded = torch.nn.functional.pad(w, (0, k_pad, 0, n_pad))
    return padded.reshape((n + n_pad) // lanes, lanes, (k + k_pad) // v, v).permute(0, 2, 1, 3).contiguous()


def group_activations(a: torch.Tensor, v: int = 4) -> torch.Tensor:
    """uint8 ``[M, K]`` as ``[M, K/V, V]``, zero past K (what te_shift_u8 makes of ``x + 128``)."""
    m, k = a.shape
    return torch.nn.functional.pad(a, (0, -k % v)).reshape(m, -1, v).contiguous()


def compile_te(tensors: list[te.Tensor], rule: Any, target: Target, name: str) -> tvm.runtime.Module:
    """The TE computation `tensors` (inputs, then the output) scheduled by `rule`, compiled for `target` as `name`.

    Raises if the rule does not take it (a kernel falling back to TVM's
    unscheduled loops would still be exact, but no measure of the rule).
    """
    func = te.create_prim_func(tensors).with_attr("global_symbol", name)
    with target:
        sch = rule.apply(func, target, False)
    if sch is None:
        raise RuntimeError(f"{type(rule).__name__} did not schedule {name}")
    mod = tvm.IRModule({name: sch.mod["main"].with_attr("global_symbol", name)})
    return tvm.compile(mod, target=target).mod


def assembly(module: tvm.runtime.Module) -> str:
    """The assembly text of a module `compile_te` built."""
    return (module.imports[0] if module.imports else module).inspect_source("asm")


def unique_name(stem: str) -> str:
    """`stem` with a process-wide counter: two functions of one name in a process clash silently."""
    return f"{stem}_{next(_BUILDS)}"


_BUILDS = itertools.count()


def build_gemm(
    m: int,
    k: int,
    n: int,
    lanes: int = 16,
    target: Target | None = None,
    micro_kernels: MicroKernels = VNNI_KERNELS,
) -> tuple[tvm.runtime.Module, str]:
    """The compiled u8s8 GEMM ``(A[M, K/4, 4], B[N/L, K/4, L, 4], C[M, N] int32)``: its module and function name."""
    target = target or host_target()
    k4 = (k + 3) // 4
    a = te.placeholder((m, k4, 4), "uint8", name="A")
    b = te.placeholder(((n + lanes - 1) // lanes, k4, lanes, 4), "int8", name="B")
    acc = te_panel_acc(a, b)
    c = te.compute((m, n), lambda i, j: acc[i, j // lanes, j % lanes], name="unpack")
    name = unique_name(f"fx_vnni_gemm_{m}_{k}_{n}_{lanes}_{micro_kernels.name.replace('-', '_')}")
    return compile_te([a, b, c], CPUInt8GemmVNNI(micro_kernels), target, name), name


def nominal_ghz() -> float:
    """The clock /proc/cpuinfo reports (under a hypervisor, the TSC rate, not the turbo clock), in GHz; 0 if unknown."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return 0.0
    mhz = [float(ln.split(":", 1)[1]) for ln in lines if ln.startswith("cpu MHz")]
    return max(mhz) / 1000 if mhz else 0.0


@T.prim_func
def _clock(buf: T.Buffer((2,), "int64"), n: T.int64) -> None:
    T.func_attr({"global_symbol": "fx_vnni_bench_clock", "tir.noalias": True})
    x = T.alloc_buffer((1,), "int64")
    x[0] = buf[0]
    for _ in range(n):
        x[0] = x[0] * x[0] + buf[1]  # a chain LLVM cannot reassociate: imul (3 cycles) + add (1)
    buf[0] = x[0]


@functools.cache
def measure_ghz(iterations: int = 2_000_000, runs: int = 25) -> float:
    """The core clock in GHz, timed on a dependent 64-bit multiply-add chain (4 cycles a step on x86 cores).

    /proc/cpuinfo inside a VM reports the TSC rate (2.6 GHz here), below the
    clock the core runs at (about 3.4 GHz here, the same as a C imul chain).
    The fastest of many short runs: a run that shares its core with another
    process measures less.
    """
    target = host_target(1)
    module = tvm.compile(tvm.IRModule({"fx_vnni_bench_clock": _clock}), target=target).mod
    clock = module["fx_vnni_bench_clock"]
    buf = tvm.runtime.tensor(np.array([3, 5], dtype="int64"), tvm.cpu())
    clock(buf, 1000)
    best = min(_seconds(lambda: clock(buf, iterations)) for _ in range(runs))
    return 4 * iterations / best / 1e9


def _seconds(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def microbench(
    m: int,
    k: int,
    n: int,
    lanes: int = 16,
    threads: int = 1,
    *,
    repeat: int = 10,
    ghz: float | None = None,
    micro_kernels: MicroKernels = VNNI_KERNELS,
    seed: int = 0,
) -> dict[str, Any]:
    """Build, check (bit-exact vs torch) and time the u8s8 GEMM; the GOP/s and the fraction of the VNNI peak.

    Full-range operands: A uint8 in [0, 255], W int8 in [-128, 127].
    """
    from fxpress.runtime import set_num_threads

    set_num_threads(threads)
    target = host_target(threads)
    module, name = build_gemm(m, k, n, lanes, target, micro_kernels)
    gemm = module[name]
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int32).to(torch.uint8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int32).to(torch.int8)
    dev = tvm.cpu()
    args = [
        tvm.runtime.tensor(group_activations(a).numpy(), dev),
        tvm.runtime.tensor(pack_gemm_weights(w, lanes).numpy(), dev),
        tvm.runtime.tensor(np.zeros((m, n), dtype="int32"), dev),
    ]
    gemm(*args)
    expected = (a.to(torch.int32) @ w.to(torch.int32).t()).numpy()
    exact = bool(np.array_equal(args[2].numpy(), expected))
    if not exact:
        raise AssertionError(f"the VNNI GEMM {m}x{k}x{n} (lanes {lanes}) differs from torch's integer matmul")
    ops = 2 * m * n * k
    number = max(1, int(2e9 // ops))  # about a second per repeat at 2 TOP/s, at least one call
    results = module.time_evaluator(name, dev, number=number, repeat=repeat)(*args).results
    seconds, best = float(np.median(results)), float(np.min(results))
    ghz = measure_ghz() if ghz is None else ghz
    peak = 16 * lanes * ghz * threads  # lanes x 4 MACs x 2 ops x 2 ports per cycle and core
    gops = ops / seconds / 1e9
    return {
        "m": m,
        "k": k,
        "n": n,
        "lanes": lanes,
        "threads": threads,
        "cpu": llvm_get_system_cpu(),
        "kernels": micro_kernels.name,
        "exact": exact,
        "ms": seconds * 1e3,  # the median of `repeat` runs
        "gops": gops,
        "best_ms": best * 1e3,  # the fastest run (other processes on a shared CPU slow the others)
        "best_gops": ops / best / 1e9,
        "ghz": ghz,  # the clock the peak is computed at (measured unless given)
        "nominal_ghz": nominal_ghz(),
        "peak_gops": peak,
        "fraction_of_peak": gops / peak if peak else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", nargs="*", type=int, help="M K N [M K N ...] (default: 128 384 1536, 1024^3)")
    parser.add_argument("--lanes", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ghz", type=float, default=None, help="core clock for the peak (default: measured)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args(argv)
    if len(args.shape) % 3:
        parser.error("shapes come as M K N triples")
    shapes = [tuple(args.shape[i : i + 3]) for i in range(0, len(args.shape), 3)] or SHAPES
    for m, k, n in shapes:
        r = microbench(m, k, n, lanes=args.lanes, threads=args.threads, ghz=args.ghz)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                f"{m}x{k}x{n} lanes={r['lanes']} threads={r['threads']} ({r['cpu']}): {r['ms']:.3f} ms "
                f"{r['gops']:.0f} GOP/s, {100 * r['fraction_of_peak']:.0f} % of {r['peak_gops']:.0f} "
                f"(at {r['ghz']:.2f} GHz); best {r['best_gops']:.0f} GOP/s; exact",
                flush=True,
            )


if __name__ == "__main__":
    main()
