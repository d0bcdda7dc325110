"""Structured channel pruning of the bundled ResNet-18-shaped network: size and speed.

    python examples/prune_resnet.py [--ratio 0.5] [--threads 1]

Folds BatchNorm, prints the prune report, prunes, compiles both graphs for this
CPU and prints weight bytes and median latency (1x3x224x224). The README's
numbers come from this script (a one-off measurement, not the benchmark run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import fxpress
from fxpress.models.resnet import example_input, resnet18
from fxpress.reports.prune_report import prune_report


def median_ms(module: fxpress.CompiledModule, x: object, runs: int = 7) -> float:
    module(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    x = example_input(1, 224)
    dense = fxpress.optimize(fxpress.capture(resnet18(), (x,)), "fold-bn")
    print(prune_report(dense, args.ratio))
    pruned = fxpress.optimize(dense, f"prune-channels{{ratio={args.ratio}}}")
    xn = x.numpy()
    for name, graph in (("dense", dense), (f"pruned {args.ratio:.0%}", pruned)):
        module = fxpress.compile(graph, target="x86", num_threads=args.threads)
        print(f"{name:12} weights {graph.param_bytes / 1e6:6.1f} MB   latency {median_ms(module, xn):6.1f} ms")


if __name__ == "__main__":
    main()
