"""Warm-up and interleaved rounds, with the CPU time each contender obtained.

`warm_up` calls a contender until it is warm and estimates one call's time;
`plan_rounds` turns that into how many rounds it can afford (all of them
for fast contenders, fewer, evenly spread, for slow ones); `interleave`
runs the rounds: every round, every contender taking part is called once,
the order rotating by one each round, with `gap_s` of sleep between calls.
For each call it records wall time (``perf_counter``) and the process's CPU
time (``process_time``: all threads), so ``cpu / wall`` says how many cores
the contender actually had.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Samples:
    """Per-call wall and CPU seconds of one contender."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        if not self.wall:
            return {"rounds": 0}
        ms = [w * 1e3 for w in self.wall]
        return {
            "rounds": len(ms),
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "cpu_per_wall": sum(self.cpu) / sum(self.wall),
            "samples_ms": [round(m, 4) for m in ms],
        }


def _timed(call: Callable[[], Any]) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    call()
    return time.perf_counter() - w0, time.process_time() - c0


def warm_up(call: Callable[[], Any], warmup: int, slow_s: float) -> float:
    """Call `call` up to `warmup` times (once only if a call takes over `slow_s`); the fastest call's seconds."""
    best = float("inf")
    for _ in range(max(1, warmup)):
        wall, _cpu = _timed(call)
        best = min(best, wall)
        if wall > slow_s:
            break
    return best


def plan_rounds(total: int, call_s: float, budget_s: float, min_rounds: int) -> int:
    """Rounds a contender taking `call_s` a call joins: all `total` if they fit `budget_s`, else fewer."""
    affordable = int(budget_s / call_s) if call_s > 0 else total
    return max(1, min(total, max(min_rounds, affordable)))


def joins(round_index: int, k: int, total: int) -> bool:
    """Whether a contender with `k` of `total` rounds takes part in round `round_index` (evenly spread)."""
    return (round_index + 1) * k // total > round_index * k // total


def interleave(
    calls: Sequence[tuple[str, Callable[[], Any]]], rounds: dict[str, int], total: int, gap_s: float
) -> dict[str, Samples]:
    """Run `total` rounds; contender `name` joins `rounds[name]` of them; its samples by name."""
    samples = {name: Samples() for name, _ in calls}
    n = len(calls)
    for r in range(total):
        order = [calls[(r + i) % n] for i in range(n)]
        for name, call in order:
            if not joins(r, rounds[name], total):
                continue
            if gap_s:
                time.sleep(gap_s)
            wall, cpu = _timed(call)
            samples[name].wall.append(wall)
            samples[name].cpu.append(cpu)
    return samples
