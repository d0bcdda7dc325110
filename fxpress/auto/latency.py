"""Latency from the target's compiled kernels: one layer at a time (cached), and whole models.

    table = LatencyTable(graph, target="x86", threads=1, store=JsonStore(dir / "latency.json"))
    table.layer(layer, Method("none", "int8"), weight_bits=8)  # {"ms": .., "cpu_per_wall": .., "bytes": ..}
    table.whole(optimized_graph, inputs)                         # Timing of the compiled whole model

A layer is measured by capturing a module holding just that layer (its own
weights, its recorded input), running the method's passes on it (the same
`pipeline_text` a whole candidate gets, the layer named ``layer``),
compiling it with ``fxpress.compile(..., tuning=False)`` for the target and
thread count, and timing it: the best of nine rounds of at least 10 ms each
(the minimum is what the kernel costs when the machine is quiet; each entry
also keeps CPU seconds per wall second, so a loaded machine shows). Channel
pruning is measured as the layer with the pruned channel count (a one-layer
graph's output channels are the graph's output, which pruning never cuts).
Entries are keyed by op kind, shapes and geometry, method, weight bits, target
name and ISA, threads and fxpress version (never by MAC counts), and stored
at once, so an interrupted search does not measure them again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fxpress.api import compile as compile_graph
from fxpress.auto.cache import JsonStore
from fxpress.auto.layers import Layer, one_layer_module
from fxpress.auto.methods import Method, Plan, optimize_text, pipeline_text
from fxpress.backends.tvm.targets import resolve_target
from fxpress.ir.capture import capture
from fxpress.ir.graph import Graph
from fxpress.reports.size import weight_sizes
from fxpress.version import __version__


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call (best round) and the process's CPU seconds per wall second while timing."""

    ms: float
    cpu_per_wall: float


def time_call(fn: Callable[[], Any], *, rounds: int = 9, min_round_s: float = 0.01) -> Timing:
    """Best-of-`rounds` time of `fn`, each round repeating it for at least `min_round_s`, after a warm-up of
    at least five calls and 0.1 s (models with dynamic int8 layers ran ~2x slower for their first calls)."""
    start, calls = time.perf_counter(), 0
    while calls < 5 or time.perf_counter() - start < 0.1:
        fn()
        calls += 1
    once = max((time.perf_counter() - start) / calls, 1e-6)
    reps = max(1, math.ceil(min_round_s / once))
    best = math.inf
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    wall = time.perf_counter() - wall0
    return Timing(best * 1e3, (time.process_time() - cpu0) / wall if wall > 0 else 0.0)


def pruned_channels(out: int, ratio: float) -> int:
    """The output channels `prune-channels{ratio=R}` keeps of `out` (its per-layer rule)."""
    return max(1, out - math.floor(out * ratio + 0.5))


class LatencyTable:
    """Per-layer kernel times for one target and thread count, cached in a `JsonStore`."""

    def __init__(self, graph: Graph, *, target: str, threads: int, store: JsonStore, reduce_range: bool) -> None:
        self.graph = graph
        self.target = target
        self.threads = threads
        self.store = store
        self.reduce_range = reduce_range
        self.isa = resolve_target(target, num_threads=threads).isa.name

    def _key(self, layer: Layer, method: Method, weight_bits: int) -> str:
        bits = weight_bits if method.quantized else 32
        rr = self.reduce_range and method.quantized and weight_bits == 8
        return (
            f"{layer.shape_key} | {method.label} bits={bits}{' rr' if rr else ''} | "
            f"{self.target}/{self.isa} threads={self.threads} | fxpress {__version__}"
        )

    def cached(self, layer: Layer, method: Method, weight_bits: int) -> dict[str, Any] | None:
        entry = self.store.get(self._key(layer, method, weight_bits))
        return dict(entry) if entry is not None else None

    def layer(self, layer: Layer, method: Method, weight_bits: int = 8) -> dict[str, Any]:
        """{"ms", "cpu_per_wall", "bytes"} of `layer` under `method` (measured once, then from the cache)."""
        key = self._key(layer, method, weight_bits)
        entry = self.store.get(key)
        if entry is not None:
            return dict(entry)
        ratio = method.prune_ratio()
        out = pruned_channels(layer.out_channels, ratio) if ratio is not None else None
        module = one_layer_module(self.graph, layer, out)
        assert layer.sample is not None
        x = layer.sample
        tiny = capture(module, (x,))
        local = dataclasses.replace(layer, ident="layer")
        plan = Plan({"layer": Method("none" if ratio is not None else method.transform, method.precision)}, weight_bits)
        text = pipeline_text(plan, [local], reduce_range=self.reduce_range)
        optimized = optimize_text(tiny, text, [(x,)]) if text else tiny
        timing = self.whole(optimized, (x,))
        entry = {
            "ms": round(timing.ms, 5),
            "cpu_per_wall": round(timing.cpu_per_wall, 3),
            "bytes": weight_sizes(optimized).stored_bytes,
            "pipeline": text,
        }
        self.store.put(key, entry)
        return dict(entry)

    def whole(self, graph: Graph, inputs: Sequence[torch.Tensor]) -> Timing:
        """Compile `graph` for the target (schedule rules, no tuning records) and time it on `inputs`."""
        compiled = compile_graph(graph, self.target, num_threads=self.threads, tuning=False, progress=False)
        arrays = [t.detach().cpu().contiguous().numpy() for t in inputs]
        return time_call(lambda: compiled.run_numpy(*arrays))


def time_side_by_side(
    graphs: dict[str, Graph], inputs: Sequence[torch.Tensor], *, target: str, threads: int, repeats: int = 3
) -> dict[str, Timing]:
    """Compile each graph, then time them in turn `repeats` times and keep each one's best (a fair ratio on a
    machine whose load changes: every model sees the same moments)."""
    arrays = [t.detach().cpu().contiguous().numpy() for t in inputs]
    compiled = {
        name: compile_graph(g, target, num_threads=threads, tuning=False, progress=False) for name, g in graphs.items()
    }
    best: dict[str, Timing] = {}
    for _ in range(repeats):
        for name, module in compiled.items():
            t = time_call(functools.partial(module.run_numpy, *arrays))
            if name not in best or t.ms < best[name].ms:
                best[name] = t
    return best
