"""The bundled ResNet-18-shaped network with its 3x3 convs decomposed (Tucker-2, and spatial): MACs, speed, cosine.

    python examples/low_rank_resnet.py [--ratio 0.5] [--threads 1] [--rounds 20] [--size 224]

Folds BatchNorm, then factorizes the 16 3x3 convs of the residual blocks
(``layer1.0.conv1`` ... ``layer4.1.conv2``; the 7x7 stem, the 1x1 shortcuts
and the classifier stay) with ``low-rank{method=tucker2,ratio=R}`` and
``low-rank{method=spatial,ratio=R}``: each conv's factors hold at most R of
its weights and of its multiply-adds. The low-rank report of each is printed
(weight error per layer, and each layer's and the model's output error on two
random images). All three graphs are compiled the same way (fp32, ``x86``:
this CPU's strongest ISA, fixed ``--threads``, no tuning records) and timed at
1 x 3 x SIZE x SIZE in interleaved rounds (each round runs all three, the order
rotating), so load on the machine hits them alike; speed-ups are medians of
per-round ratios. The output cosine (logits, to the undecomposed graph) is
measured on 8 random images.

The network's weights are random (seeded Kaiming-normal, `fxpress.models.resnet`:
fxpress bundles no trained ResNet), and a random kernel has a flat spectrum,
so the cosines here are far below what a trained network keeps at the same
ranks (trained kernels are much closer to low rank); they measure the
machinery, the MACs and the speed, not accuracy. No fine-tuning. Seeded; writes
examples/results/low_rank_resnet.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fxpress
from fxpress.models.resnet import example_input, resnet18
from fxpress.passes import LowRank
from fxpress.reports.low_rank_report import low_rank_report
from fxpress.runtime.cpu import host_cpu_model

BLOCK_CONVS = r"layer\d\.\d\.conv[12]"


def interleaved(modules: dict[str, Any], x: np.ndarray, rounds: int) -> dict[str, Any]:
    """Median / min ms of each module over `rounds` rounds (order rotating), and median per-round ratios to the first."""
    names = list(modules)
    for m in modules.values():
        for _ in range(2):
            m.run_numpy(x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            start = time.perf_counter()
            modules[name].run_numpy(x)
            times[name].append(time.perf_counter() - start)
    out: dict[str, Any] = {
        n: {"median_ms": round(statistics.median(t) * 1e3, 2), "min_ms": round(min(t) * 1e3, 2)}
        for n, t in times.items()
    }
    base = names[0]
    for n in names[1:]:
        out[n]["speedup"] = round(statistics.median(a / b for a, b in zip(times[base], times[n], strict=True)), 3)
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double())
    return {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4)}


def run(
    *, ratio: float = 0.5, threads: int = 1, rounds: int = 20, size: int = 224, seed: int = 0, compile: bool = True
) -> dict[str, Any]:
    torch.manual_seed(seed)
    x = example_input(1, size, seed=seed)
    dense = fxpress.optimize(fxpress.capture(resnet18(seed=seed), (x,)), "fold-bn")
    gen = torch.Generator().manual_seed(seed + 1)
    images = [torch.randn(1, 3, size, size, generator=gen) for _ in range(8)]
    ref = torch.cat([dense(im) for im in images])
    result: dict[str, Any] = {"cpu": host_cpu_model(), "threads": threads, "input": [1, 3, size, size]}
    graphs = {"dense": dense}
    for method in ("tucker2", "spatial"):
        request = LowRank(method=method, ratio=ratio, layers=BLOCK_CONVS)
        report = low_rank_report(dense, request, data=[(im,) for im in images[:2]])
        print(report, "\n")
        graphs[method] = fxpress.optimize(dense, [request])
        totals = report.totals()
        rows = report.factorized
        result[method] = {
            "layers": len(rows),
            "ranks": {r.layer: list(r.rank) for r in rows},
            "conv_macs": [sum(r.macs[0] for r in rows), sum(r.macs[1] for r in rows)],
            "model_macs": [totals["macs_before"], totals["macs_after"]],
            "model_weights": [totals["weights_before"], totals["weights_after"]],
            "mean_weight_error": round(statistics.mean(r.error or 0.0 for r in rows), 4),
            "cosine": cosine(ref, torch.cat([graphs[method](im) for im in images])),
        }
    if compile:
        modules = {
            name: fxpress.compile(g, target="x86", num_threads=threads, tuning=False) for name, g in graphs.items()
        }
        for name in ("tucker2", "spatial"):
            out = modules[name](images[0].numpy())
            result[name]["compiled_vs_eager_max_abs"] = float(np.abs(out - graphs[name](images[0]).numpy()).max())
        result["latency"] = interleaved(modules, x.numpy(), rounds)
    result["options"] = {"ratio": ratio, "rounds": rounds, "seed": seed}
    return result


def table(r: dict[str, Any]) -> str:
    lat = r.get("latency", {})
    head = f"| ResNet-18 (random weights), 1x3x{r['input'][2]}x{r['input'][3]} | MACs | weights | logit cosine (mean / min) |"
    lines = [head + (" median ms | speed-up |" if lat else ""), "|---|---|---|---|" + ("---|---|" if lat else "")]
    first = r["tucker2"]
    dense_cells = (
        f"| undecomposed | {first['model_macs'][0] / 1e9:.2f} G | {first['model_weights'][0] / 1e6:.2f} M | 1 / 1 |"
    )
    lines.append(dense_cells + (f" {lat['dense']['median_ms']} | 1 |" if lat else ""))
    for name in ("tucker2", "spatial"):
        m = r[name]
        cells = (
            f"| {name}, ratio {r['options']['ratio']} ({m['layers']} convs) | {m['model_macs'][1] / 1e9:.2f} G "
            f"| {m['model_weights'][1] / 1e6:.2f} M | {m['cosine']['mean']} / {m['cosine']['min']} |"
        )
        lines.append(cells + (f" {lat[name]['median_ms']} | {lat[name]['speedup']}x |" if lat else ""))
    if lat:
        lines += [
            "",
            f"Compiled fp32, x86, {r['threads']} thread(s), median of {r['options']['rounds']} interleaved rounds "
            f"on {r['cpu']}. Random weights: the cosines say nothing about a trained network.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("examples/results/low_rank_resnet.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(
        ratio=args.ratio,
        threads=args.threads,
        rounds=args.rounds,
        size=args.size,
        seed=args.seed,
        compile=not args.no_compile,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(result) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
