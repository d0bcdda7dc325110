"""``python -m tools.bench.sparsity``: are compressed models faster through fxpress's own backend?

Each pair is compiled by fxpress for this CPU at each thread count and timed
interleaved in one run (see `tools.bench.measure`), with the CPU time per wall
second each build obtained:

- ``resnet18``: the ResNet-18-shaped network at 1x3x224x224, unpruned vs
  ``fold-bn,prune-channels{ratio=0.5}``;
- ``linear``: ``nn.Linear(768, 3072)`` at batch 128, dense vs 90 % of its 16x1
  blocks zero (``sparsify{density=0.1,pattern=16x1},annotate-sparsity``);
- ``minilm-b1`` / ``minilm-b8``: all-MiniLM-L6-v2 at seq 128, dense vs its
  FFN layers (``layer.N.intermediate.dense``, ``layer.N.output.dense``) at
  80 % 16x1 block sparsity;
- ``resnet18-int8`` / ``linear-int8``: the same two models, int8 (``observe{per-channel=true},
  calibrate,fold-qdq``, calibrated on the example batch) vs pruning or
  sparsity, then int8, in one pipeline: the baseline is int8, not fp32
  (issue 18: pruned + int8 against int8 alone; the int8 block-sparse
  kernel against the dense int8 kernel the target picks, AMX where the
  host has it); ``linear-int8-d20`` is the linear at 80 % (20 % kept).

Besides the call's time (numpy in and out, as a user calls it), each build's
Relax VM ``main`` is timed alone (TVM's time evaluator, interleaved the same
way, ``vm_median_ms``): the kernels without the per-call copies, which at
these sizes are a large, fixed share of the call.

Both builds of a pair go through ``fxpress.compile`` with the same options;
the only difference is the pipeline. The max abs diff column compares each
build with eager PyTorch running the same graph (``graph.gm``), so it checks
the build, not the accuracy of the compression. Writes ``sparsity.json`` and
``sparsity.md`` under ``--out-dir`` (default ``bench/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from torch import nn

import fxpress
from tools.bench.machine import machine_info
from tools.bench.measure import interleave, plan_rounds, warm_up

REPO = Path(__file__).resolve().parents[2]
FFN = r".*layer\.\d+\.(intermediate|output)\.dense"
Loader = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]


def _resnet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from fxpress.models.resnet import example_input, resnet18

    return resnet18(seed=0), (example_input(1, 224, seed=1),)


def _linear() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return nn.Linear(768, 3072).eval(), (torch.randn(128, 768),)


def _minilm(batch: int) -> Loader:
    def load() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        from fxpress.models.minilm import example_inputs, sentence_encoder

        return sentence_encoder("eager"), example_inputs(batch, 128)

    return load


INT8 = "observe{per-channel=true},calibrate,fold-qdq"
# name -> (model, variant pipeline, what it is, baseline pipeline ("" = the captured fp32 graph), baseline name)
PAIRS: dict[str, tuple[Loader, str, str, str, str]] = {
    "resnet18": (_resnet, "fold-bn,prune-channels{ratio=0.5}", "50 % channels pruned", "", "dense"),
    "linear": (
        _linear,
        "sparsify{density=0.1,pattern=16x1},annotate-sparsity",
        "90 % of 16x1 blocks zero",
        "",
        "dense",
    ),
    "minilm-b1": (
        _minilm(1),
        f"sparsify{{density=0.2,pattern=16x1,layers={FFN}}},annotate-sparsity",
        "FFN 80 % 16x1",
        "",
        "dense",
    ),
    "minilm-b8": (
        _minilm(8),
        f"sparsify{{density=0.2,pattern=16x1,layers={FFN}}},annotate-sparsity",
        "FFN 80 % 16x1",
        "",
        "dense",
    ),
    "resnet18-int8": (
        _resnet,
        f"fold-bn,prune-channels{{ratio=0.5}},{INT8}",
        "50 % channels pruned + int8",
        f"fold-bn,{INT8}",
        "int8",
    ),
    "linear-int8": (
        _linear,
        f"sparsify{{density=0.1,pattern=16x1}},{INT8}",
        "90 % of 16x1 blocks zero + int8",
        INT8,
        "int8",
    ),
    "linear-int8-d20": (
        _linear,
        f"sparsify{{density=0.2,pattern=16x1}},{INT8}",
        "80 % of 16x1 blocks zero + int8",
        INT8,
        "int8",
    ),
}


def _optimize(graph: fxpress.Graph, text: str, inputs: tuple[torch.Tensor, ...]) -> fxpress.Graph:
    """`graph` through pipeline `text`, its calibrate fed the example batch."""
    import dataclasses

    from fxpress.passes import Calibrate
    from fxpress.passes.registry import parse_pipeline

    passes = [dataclasses.replace(p, data=[inputs]) if isinstance(p, Calibrate) else p for p in parse_pipeline(text)]
    return fxpress.optimize(graph, passes) if passes else graph


def _build(graph: fxpress.Graph, inputs: tuple[torch.Tensor, ...], threads: int) -> tuple[Callable[[], Any], dict]:
    t0 = time.perf_counter()
    compiled = fxpress.compile(graph, target="x86", num_threads=threads, tuning=False)
    arrays = tuple(x.numpy() for x in inputs)
    with torch.inference_mode():
        ref = graph.gm(*inputs)
    ref = (ref[0] if isinstance(ref, tuple | list) else ref).numpy()
    out = compiled(*arrays)
    out = np.asarray(out[0] if isinstance(out, tuple | list) else out)
    info = {
        "compile_s": round(time.perf_counter() - t0, 2),
        "weight_mb": round(sum(p.numpy().nbytes for p in compiled.params) / 2**20, 2),
        "max_abs_diff_vs_eager": float(np.abs(out - ref).max()),
        "block_sparse_layers": sum(d["sparse"] for d in compiled.manifest.get("block_sparse", [])),
        "block_sparse": compiled.manifest.get("block_sparse", []),
        "isa": compiled.manifest.get("target", {}).get("isa"),
    }
    vm = compiled._machine()
    vm_args = [compiled._to_device(a) for a in arrays] + list(compiled.params)
    timer = vm.time_evaluator("main", compiled._device, number=5, repeat=1)
    info["_vm"] = lambda: timer(*vm_args).results[0]
    return (lambda: compiled(*arrays)), info


def bench_pair(name: str, threads: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    load, pipeline, what, base, base_name = PAIRS[name]
    model, inputs = load()
    torch.set_num_threads(threads)
    graph = fxpress.capture(model, inputs)
    variants = {base_name: _optimize(graph, base, inputs), what: _optimize(graph, pipeline, inputs)}
    built = {label: _build(g, inputs, threads) for label, g in variants.items()}
    rounds = {}
    for label, (call, _) in built.items():
        rounds[label] = plan_rounds(args.rounds, warm_up(call, args.warmup, 2.0), args.budget_s, 3)
    samples = interleave([(label, call) for label, (call, _) in built.items()], rounds, args.rounds, args.gap_ms / 1e3)
    vm_ms: dict[str, list[float]] = {label: [] for label in built}
    for _ in range(args.rounds):  # the VM's main alone, interleaved the same way
        for label, (_, info) in built.items():
            vm_ms[label].append(info["_vm"]() * 1e3)
    rows = []
    for label, (_, info) in built.items():
        pipe = base if label == base_name else pipeline
        info = {k: v for k, v in info.items() if k != "_vm"}
        rows.append({"case": name, "threads": threads, "variant": label, "pipeline": pipe, **info,
                     **samples[label].summary(), "vm_median_ms": float(np.median(vm_ms[label])),
                     "vm_min_ms": min(vm_ms[label])})  # fmt: skip
    dense = rows[0]["median_ms"]
    for row in rows:
        row["speedup_vs_dense"] = dense / row["median_ms"]
        row["vm_speedup_vs_dense"] = rows[0]["vm_median_ms"] / row["vm_median_ms"]
    return rows


def write(run: dict[str, Any], out_dir: Path, name: str = "sparsity") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(run, indent=1) + "\n")
    lines = [
        "# fxpress: compressed vs baseline builds (same backend, one run)",
        "",
        f"Started {run['started']}, {run['wall_s']:.0f} s; {run['machine'].get('cpu_model', '')}. "
        "Made by `python -m tools.bench.sparsity`; speedup = baseline median / variant median (the baseline is the "
        "first row of each case: fp32 dense, or int8 for the -int8 cases); VM = the Relax VM's main alone.",
        "",
        "| case | threads | variant | median ms | speedup | VM median ms | VM speedup | CPU/wall | ISA "
        "| artifact weights MB | BSR layers | max abs diff vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run["results"]:
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['variant']} | {r['median_ms']:.3f} | {r['speedup_vs_dense']:.2f} "
            f"| {r.get('vm_median_ms', float('nan')):.3f} | {r.get('vm_speedup_vs_dense', float('nan')):.2f} "
            f"| {r['cpu_per_wall']:.2f} | {r.get('isa', '')} | {r['weight_mb']:.1f} | {r['block_sparse_layers']} "
            f"| {r['max_abs_diff_vs_eager']:.1e} |"
        )
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.sparsity", description=__doc__.split("\n\n")[1])
    p.add_argument("--cases", default=",".join(PAIRS), help=f"comma-separated, from {', '.join(PAIRS)}")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=30.0)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--out-dir", type=Path, default=REPO / "bench")
    p.add_argument("--name", default="sparsity", help="file stem of the results (sparsity.json / .md)")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in PAIRS]
    if unknown:
        p.error(f"unknown case: {', '.join(unknown)}")
    machine = machine_info()
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    results = [row for c in cases for t in (int(x) for x in args.threads.split(",")) for row in bench_pair(c, t, args)]
    run = {"started": started, "wall_s": time.perf_counter() - t0, "machine": machine, "config": {
        k: str(v) for k, v in vars(args).items()}, "results": results}  # fmt: skip
    md = write(run, args.out_dir, args.name)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
