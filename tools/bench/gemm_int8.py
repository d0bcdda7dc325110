"""int8 GEMM micro-benchmark: fxpress's VNNI and AMX kernels, and torch._int_mm, in GOP/s and fraction of peak.

    python -m tools.bench.gemm_int8 [--threads 1] [--out-dir bench]

Shapes: 128x384x1536 (all-MiniLM-L6-v2's FFN up-projection at sequence 128)
and 1024x1024x1024, M x K x N, uint8 activations x int8 weights -> int32.
Each kernel is built for this host, checked bit-exact against an integer
reference, and timed (medians of repeated runs; the best run is kept too,
since another process on a shared 2-core machine slows some runs). The
core clock is measured once (a dependent-add loop, isa/x86_vnni/bench.py)
and the peaks follow from it: VNNI 256 ops a cycle (two 512-bit
``vpdpbusd`` ports, 16 lanes x 4 multiply-adds each), AMX 2048 ops a cycle
(``tdpbusd``: 1024 multiply-adds). A kernel the host cannot run is listed
with the missing CPU flag. Writes ``gemm_int8.json`` and ``gemm_int8.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from fxpress.runtime.cpu import host_cpu_flags
from tools.bench.machine import machine_info

SHAPES = ((128, 384, 1536), (1024, 1024, 1024))
PEAK_OPS_PER_CYCLE = {"vnni": 256, "amx": 2048}
NEEDS = {"vnni": ("avx512_vnni",), "amx": ("amx_tile", "amx_int8")}


def _torch_int_mm(m: int, k: int, n: int, threads: int, repeat: int = 10) -> dict[str, Any]:
    """torch._int_mm (int8 x int8 -> int32, oneDNN on x86) as the reference point."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    torch._int_mm(a, b)
    ops, samples = 2 * m * n * k, []
    calls = max(1, int(2e9 // ops))
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            torch._int_mm(a, b)
        samples.append((time.perf_counter() - start) / calls)
    samples.sort()
    med, best = samples[len(samples) // 2], samples[0]
    return {"ms": med * 1e3, "best_ms": best * 1e3, "gops": ops / med / 1e9, "best_gops": ops / best / 1e9}


def _fxpress(kind: str, m: int, k: int, n: int, threads: int) -> dict[str, Any]:
    if kind == "vnni":
        from fxpress.backends.tvm.isa.x86_vnni.bench import microbench

        return microbench(m, k, n, lanes=16, threads=threads, ghz=1.0)
    from fxpress.backends.tvm.isa.x86_amx.bench import microbench

    return microbench(m, k, n, threads=threads)


def run(threads: int) -> dict[str, Any]:
    from fxpress.backends.tvm.isa.x86_vnni.bench import measure_ghz

    ghz = measure_ghz()
    rows = []
    for m, k, n in SHAPES:
        for kind in ("vnni", "amx", "torch._int_mm"):
            missing = [f for f in NEEDS.get(kind, ()) if f not in host_cpu_flags()]
            row: dict[str, Any] = {"kernel": kind, "shape": f"{m}x{k}x{n}", "threads": threads}
            if missing:
                rows.append({**row, "skipped": f"this CPU lacks {missing}"})
                continue
            got = _torch_int_mm(m, k, n, threads) if kind == "torch._int_mm" else _fxpress(kind, m, k, n, threads)
            peak = PEAK_OPS_PER_CYCLE.get(kind, PEAK_OPS_PER_CYCLE["amx"]) * ghz * threads
            keep = ("ms", "best_ms", "gops", "best_gops")
            rows.append({**row, **{key: got[key] for key in keep}, "peak_gops": peak, "of_peak": got["gops"] / peak})
    return {"machine": machine_info(), "measured_ghz": ghz, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# int8 GEMM micro-benchmark",
        "",
        f"CPU: {m.get('cpu_model', '?')} (LLVM: {m.get('llvm_cpu', '?')}), git {m.get('git', '?')}; clock measured at {result['measured_ghz']:.2f} GHz "
        "(peaks: VNNI 256 ops/cycle, AMX 2048 ops/cycle; torch._int_mm against the AMX peak).",
        "",
        "| kernel | M x K x N | threads | median ms | GOP/s | best GOP/s | of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['kernel']} | {r['shape']} | {r['threads']} | {r['skipped']} | | | |")
            continue
        lines.append(
            f"| {r['kernel']} | {r['shape']} | {r['threads']} | {r['ms']:.3f} | {r['gops']:.0f} | "
            f"{r['best_gops']:.0f} | {100 * r['of_peak']:.0f} % |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default="bench")
    args = parser.parse_args(argv)
    result = run(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gemm_int8.json").write_text(json.dumps(result, indent=1))
    text = to_markdown(result)
    (out / "gemm_int8.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
