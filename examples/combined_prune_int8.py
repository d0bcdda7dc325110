"""Combined pipelines that keep every gain (issue 18 item 2): pruning or block sparsity, then int8, then compile.

Two measurements, each against **int8 alone** compiled by the same
``fxpress.compile(target="x86")`` (whatever the host's strongest ISA picks:
AMX tiles for big int8 GEMMs and convs on this Xeon, VNNI for the rest):

1. the ResNet-18-shaped network (fxpress/models/resnet.py, 1x3x224x224):
   ``fold-bn,observe{per-channel=true},calibrate,fold-qdq`` against
   ``fold-bn,prune-channels{ratio=0.5},observe{per-channel=true},calibrate,fold-qdq``
   (bar: at least 1.8x faster);
2. ``nn.Linear(768, 3072)`` at several batch sizes: int8 against
   ``sparsify{density=0.1,pattern=16x1},observe{per-channel=true},calibrate,fold-qdq``
   (90 % of the 16x1 blocks zero; the int8 block-sparse VNNI kernel; bar: at
   least 3x faster).

Both builds of a pair are timed interleaved in one process, at 1 and 2
threads, with the process's CPU time per wall second beside each (the VM is
shared: below 1.0 per thread means the other work took part of the core).
Two times per build: the call as a user makes it (numpy in, numpy out) and
the Relax VM's ``main`` alone (TVM's time evaluator: the kernels without
the per-call copies). Every compiled build is checked bit for bit against
its eager int8 graph (the linear case must match bit for bit; for ResNet-18
the difference is recorded). Calibration is on random inputs: this measures speed
and exactness, not accuracy (pruning without fine-tuning changes the model).

    .venv/bin/python examples/combined_prune_int8.py [--quick] [--threads 1,2] [--batches 1,8,32,128]

Writes examples/results/combined_prune_int8.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import fxpress
from fxpress.models.resnet import example_input, resnet18
from fxpress.passes import Calibrate
from fxpress.passes.registry import parse_pipeline
from fxpress.runtime.cpu import host_cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
INT8 = "observe{per-channel=true},calibrate,fold-qdq"
PAIRS = {
    "resnet18": (f"fold-bn,{INT8}", f"fold-bn,prune-channels{{ratio=0.5}},{INT8}", 1.8),
    "linear": (INT8, f"sparsify{{density=0.1,pattern=16x1}},{INT8}", 3.0),
}


def optimize(graph: fxpress.Graph, text: str, batches: list[tuple[torch.Tensor, ...]]) -> fxpress.Graph:
    """`graph` through the pipeline `text`, its calibrate fed `batches` (as the CLI's --calibration does)."""
    passes = [Calibrate(data=batches) if isinstance(p, Calibrate) else p for p in parse_pipeline(text)]
    return fxpress.optimize(graph, passes)


def build(
    graph: fxpress.Graph, x: torch.Tensor, threads: int, strict: bool
) -> tuple[Callable[[], Any], Callable[[], float], dict]:
    """Compile `graph` for this CPU; (the call, the VM main's timer in seconds, facts); `strict`: bit-exact or raise."""
    t0 = time.perf_counter()
    compiled = fxpress.compile(graph, target="x86", num_threads=threads, tuning=False)
    compile_s = time.perf_counter() - t0
    a = x.numpy()
    out, expected = compiled(a), graph(x).detach().numpy()
    exact = bool(np.array_equal(out, expected))
    if not exact and strict:
        raise AssertionError(f"compiled differs from eager int8: max {np.abs(out - expected).max()}")
    vm = compiled._machine()
    args = [compiled._to_device(np.ascontiguousarray(a)), *compiled.params]
    timer = vm.time_evaluator("main", compiled._device, number=5, repeat=1)
    decisions = compiled.manifest.get("block_sparse", [])
    facts = {
        "compile_s": round(compile_s, 1),
        "isa": compiled.manifest["target"].get("isa"),
        "bit_exact_vs_eager_int8": exact,
        "max_abs_diff_vs_eager_int8": float(np.abs(out - expected).max()),
        "int8_block_sparse_layers": sum(bool(d.get("int8") and d["sparse"]) for d in decisions),
        "block_sparse": decisions,
        "weights_mb": round(sum(p.numpy().nbytes for p in compiled.params) / 2**20, 2),
    }
    return (lambda: compiled(a)), (lambda: timer(*args).results[0]), facts


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Median and min ms per contender over `rounds` alternating rounds (order rotating), with CPU/wall."""
    samples: dict[str, list[float]] = {k: [] for k in calls}
    cpu = wall = 0.0
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c0, w0 = time.process_time(), time.perf_counter()
            result = calls[name]()
            seconds = time.perf_counter() - w0
            cpu, wall = cpu + time.process_time() - c0, wall + seconds
            samples[name].append(1e3 * (result if isinstance(result, float) else seconds))
    out = {k: {"median_ms": statistics.median(v), "min_ms": min(v)} for k, v in samples.items()}
    for v in out.values():
        v["cpu_per_wall"] = cpu / wall
    return out


def measure(case: str, model: nn.Module, x: torch.Tensor, threads: int, rounds: int) -> dict[str, Any]:
    base_text, variant_text, bar = PAIRS[case]
    torch.manual_seed(1)
    batches = [(x,), (torch.randn_like(x),)]
    graph = fxpress.capture(model, (x,))
    graphs = {"int8": optimize(graph, base_text, batches), "compressed + int8": optimize(graph, variant_text, batches)}
    built = {k: build(g, x, threads, strict=case == "linear") for k, g in graphs.items()}
    for call, timer, _ in built.values():  # warm up
        call()
        timer()
    calls = interleaved({k: b[0] for k, b in built.items()}, rounds)
    vms = interleaved({k: b[1] for k, b in built.items()}, rounds)
    row: dict[str, Any] = {"case": case, "rows": int(x.shape[0]), "threads": threads, "bar": bar}
    for label, (_, _, facts) in built.items():
        row[label] = {**facts, "call": calls[label], "vm_main": vms[label]}
    row["speedup_call"] = calls["int8"]["median_ms"] / calls["compressed + int8"]["median_ms"]
    row["speedup_vm"] = vms["int8"]["median_ms"] / vms["compressed + int8"]["median_ms"]
    row["pipelines"] = {"int8": base_text, "compressed + int8": variant_text}
    print(
        f"{case} rows={row['rows']} threads={threads}: int8 {calls['int8']['median_ms']:.3f} ms, compressed + int8 "
        f"{calls['compressed + int8']['median_ms']:.3f} ms: {row['speedup_call']:.2f}x call, "
        f"{row['speedup_vm']:.2f}x VM main (bar {bar}x); CPU/wall {calls['int8']['cpu_per_wall']:.2f}",
        flush=True,
    )
    return row


def write(rows: list[dict[str, Any]], started: str, wall_s: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    cpu = host_cpu_model()
    (RESULTS / "combined_prune_int8.json").write_text(
        json.dumps({"cpu": cpu, "started": started, "wall_s": round(wall_s), "results": rows}, indent=1) + "\n"
    )
    lines = [
        "# Pruning or block sparsity, then int8: compressed + int8 against int8 alone",
        "",
        f"{cpu}; started {started}, {wall_s:.0f} s; `examples/combined_prune_int8.py`. Both builds `fxpress.compile("
        'target="x86")` (ISA below), timed interleaved; medians. *call*: as a user calls it (numpy in and out); '
        "*VM*: the Relax VM's main alone. Max abs diff: compiled vs its eager int8 graph (0 = bit-exact).",
        "",
        "| case | rows | threads | ISA | int8 ms (call / VM) | compressed + int8 ms (call / VM) | speedup call "
        "| speedup VM | bar | met (VM) | int8 BSR layers | CPU/wall | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["int8"], r["compressed + int8"]
        lines.append(
            f"| {r['case']} | {r['rows']} | {r['threads']} | {a['isa']} "
            f"| {a['call']['median_ms']:.3f} / {a['vm_main']['median_ms']:.3f} "
            f"| {b['call']['median_ms']:.3f} / {b['vm_main']['median_ms']:.3f} | {r['speedup_call']:.2f} "
            f"| {r['speedup_vm']:.2f} | {r['bar']} | {'yes' if r['speedup_vm'] >= r['bar'] else 'no'} "
            f"| {b['int8_block_sparse_layers']} | {a['call']['cpu_per_wall']:.2f} "
            f"| {max(a['max_abs_diff_vs_eager_int8'], b['max_abs_diff_vs_eager_int8']):.1e} |"
        )
    (RESULTS / "combined_prune_int8.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,8,32,128", help="rows of the Linear(768, 3072) case")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="1 thread, batch 8 and 128, 8 rounds, no ResNet")
    args = p.parse_args(argv)
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    batches = [8, 128] if args.quick else [int(b) for b in args.batches.split(",")]
    rounds = 8 if args.quick else args.rounds
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    torch.manual_seed(0)
    linear = nn.Linear(768, 3072).eval()
    rows = []
    for t in threads:
        if not args.quick:
            rows.append(measure("resnet18", resnet18(seed=0), example_input(1, 224, seed=1), t, max(rounds // 3, 5)))
        for m in batches:
            rows.append(measure("linear", linear, torch.randn(m, 768), t, rounds))
    write(rows, started, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
