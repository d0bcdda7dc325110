"""Peak memory and wall time of capture, optimize and compile, for MiniLM and a BERT-base-sized model.

    python -m tools.bench.resources [--models minilm,bert-base] [--pipelines fp32,int8] [--out-dir bench/]

Issue 20's resource limits: a user compiling a 100M-parameter model needs to know it fits the machine
(this one has 24 GiB) and how long each step takes. Each (model, pipeline) runs in a fresh subprocess so
its memory is its own; a sampler thread reads the process's resident set every 10 ms and each step
records its wall time, the CPU time it got, and the highest RSS seen during it (and the RSS before it,
so the step's own growth shows). Steps: build the model, capture, optimize (``fold-bn,fold-constants,dce``
for fp32; ``observe{per-channel=true},calibrate,fold-qdq`` on 4 batches for int8) and compile for x86.

Models: ``minilm`` is the bundled all-MiniLM-L6-v2 (22.7 M parameters, batch 1 x 128 tokens);
``bert-base`` is transformers' default BertConfig (12 layers, hidden 768, 109.5 M parameters) with
random seeded weights, batch 1 x 128 tokens; ``bert-tiny`` (2 layers, hidden 64) is for tests.
Writes resources.json and resources.md (the table the README links) in --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

MODELS = ("minilm", "bert-base", "bert-tiny")
PIPELINES = ("fp32", "int8")
ROOT = Path(__file__).resolve().parents[2]


class Sampler:
    """The highest resident set size of this process seen since `reset`, sampled every `period` seconds."""

    def __init__(self, period: float = 0.01) -> None:
        self._proc = psutil.Process()
        self._period = period
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def reset(self) -> int:
        self.peak = self._proc.memory_info().rss
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def measured(steps: list[dict[str, Any]], name: str, sampler: Sampler) -> Iterator[None]:
    """Record `name`'s wall time, CPU time, RSS before and peak RSS during it."""
    before = sampler.reset()
    cpu0, t0 = time.process_time(), time.perf_counter()
    yield
    wall = time.perf_counter() - t0
    sampler.peak = max(sampler.peak, psutil.Process().memory_info().rss)
    steps.append(
        {
            "step": name,
            "wall_s": round(wall, 2),
            "cpu_s": round(time.process_time() - cpu0, 2),
            "rss_before_mib": round(before / 2**20),
            "peak_rss_mib": round(sampler.peak / 2**20),
        }
    )


def build(model: str) -> tuple[Any, tuple[Any, ...], list[tuple[Any, ...]]]:
    """The model, its example inputs, and 4 calibration batches."""
    import torch

    if model == "minilm":
        from fxpress.models import minilm

        net = minilm.sentence_encoder()
        inputs = minilm.example_inputs(1, 128)
        from fxpress.models.sentences import sentences

        text = sentences("calib")
        calib = [minilm.tokenize(text[i : i + 1], 128) for i in range(4)]
        return net, inputs, calib
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
    cfg = BertConfig(**(small if model == "bert-tiny" else {}))

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(cfg, add_pooling_layer=False).eval()

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    gen = torch.Generator().manual_seed(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(1000, cfg.vocab_size, (1, 128), generator=gen), torch.ones(1, 128, dtype=torch.int64)

    return Encoder().eval(), batch(), [batch() for _ in range(4)]


def run_one(model: str, pipeline: str) -> dict[str, Any]:
    """Build, capture, optimize and compile `model` with `pipeline` here; returns the measured steps."""
    sampler = Sampler()
    steps: list[dict[str, Any]] = []
    with measured(steps, "import", sampler):
        import torch

        import fxpress
        from fxpress.passes import Calibrate, FoldQDQ, Observe
    torch.set_num_threads(1)
    with measured(steps, "build model", sampler):
        net, inputs, calib = build(model)
    params = sum(p.numel() for p in net.parameters())
    with measured(steps, "capture", sampler):
        graph = fxpress.capture(net, inputs)
    with measured(steps, "optimize", sampler):
        if pipeline == "fp32":
            graph = fxpress.optimize(graph, "fold-bn,fold-constants,dce")
        else:
            graph = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=calib), FoldQDQ()])
    with measured(steps, "compile x86", sampler):
        module = fxpress.compile(graph, target="x86", num_threads=1)
    with measured(steps, "first call", sampler):
        module(*inputs)
    sampler.close()
    return {
        "model": model,
        "pipeline": pipeline,
        "parameters": params,
        "steps": steps,
        "peak_rss_mib": max(s["peak_rss_mib"] for s in steps),
        "total_wall_s": round(sum(s["wall_s"] for s in steps), 1),
    }


def _child(model: str, pipeline: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.bench.resources", "--child", f"{model}:{pipeline}"]
    env = {**os.environ, "FXPRESS_PROGRESS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{model}/{pipeline} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["progress"] = [ln for ln in proc.stderr.splitlines() if ln.startswith("[fxpress]")]
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "# Resources: peak memory and wall time of each step",
        "",
        f"Generated by `python -m tools.bench.resources` on {machine.get('cpu', '?')} "
        f"({machine.get('cores', '?')} cores, {machine.get('mem_gib', '?')} GiB), 1 thread. "
        "Peak RSS is the highest resident set of the whole process during the step (so it includes what "
        "earlier steps left); the budget is this machine's 24 GiB.",
        "",
        "| model | params | pipeline | step | wall s | CPU s | RSS before MiB | peak RSS MiB |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for s in r["steps"]:
            lines.append(
                f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['pipeline']} | {s['step']} | {s['wall_s']} "
                f"| {s['cpu_s']} | {s['rss_before_mib']} | {s['peak_rss_mib']} |"
            )
    lines += ["", "| model | pipeline | total wall s | peak RSS MiB |", "|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['pipeline']} | {r['total_wall_s']} | {r['peak_rss_mib']} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, child: Callable[[str, str, float], dict[str, Any]] = _child) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.resources", description=__doc__.split("\n\n")[1])
    p.add_argument("--models", default="minilm,bert-base", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--pipelines", default="fp32,int8", help=f"comma-separated, from {', '.join(PIPELINES)}")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per (model, pipeline) subprocess")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        model, pipeline = args.child.split(":")
        print(json.dumps(run_one(model, pipeline)))
        return 0
    models, pipelines = args.models.split(","), args.pipelines.split(",")
    for name, given, valid in (("model", models, MODELS), ("pipeline", pipelines, PIPELINES)):
        bad = [g for g in given if g not in valid]
        if bad:
            p.error(f"unknown {name}(s) {bad}; choose from {', '.join(valid)}")
    from tools.bench.machine import machine_info

    info = machine_info()
    machine = {"cpu": info.get("cpu_model"), "cores": os.cpu_count(), "mem_gib": info.get("mem_gib")}
    results = []
    for model in models:
        for pipeline in pipelines:
            r = child(model, pipeline, args.timeout_s)
            print(f"{model:10} {pipeline:5} {r['total_wall_s']:8.1f} s  peak {r['peak_rss_mib']} MiB", flush=True)
            results.append(r)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "resources.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (args.out_dir / "resources.md").write_text(markdown(results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
