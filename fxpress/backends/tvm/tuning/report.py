"""What a tune measured and reports: a task's best candidate timed against fxpress's rule, and `TuneReport`.

Keep only what helps: after its search, a task's best candidate and the
schedule fxpress's rules give the same PrimFunc are built alone (each under a
unique symbol: same-named kernels clash) and timed side by side in this
process on the same random arguments (`time_side_by_side`: median of 7
repeats of at least 40 ms). The search keeps the record only when it is
faster, so replaying a cache never swaps a rule kernel for one that measured
slower at tune time.

`TaskResult` holds one task's trials and times (microseconds), `TuneReport`
the whole tune: what `tune` returns, printed as a table by ``fxpress tune``
(or as JSON with ``--json``); `progress_line` is the line printed per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm.s_tir.dlight as dl
from tvm.s_tir import meta_schedule as ms

from fxpress.backends.tvm.lower import schedule_rules
from fxpress.backends.tvm.targets import TargetSpec


@dataclass(frozen=True)
class TaskResult:
    """One task: what the search did and the side-by-side times (microseconds)."""

    name: str
    weight: int  # how many calls of this function the model makes
    flops: float
    trials: int
    valid: int  # candidates that built and ran
    search_s: float
    tuned_us: float | None
    rule_us: float | None
    kept: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class TuneReport:
    """What `tune` did: per task, the trials and the tuned vs fxpress-rule latency."""

    target: str
    key: str
    directory: Path
    budget_s: float
    tasks: list[TaskResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # function -> why not tuned
    wall_s: float = 0.0

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def kept(self) -> int:
        return sum(t.kept for t in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "key": self.key,
            "directory": str(self.directory),
            "budget_s": self.budget_s,
            "wall_s": round(self.wall_s, 2),
            "trials": self.trials,
            "kept": self.kept,
            "tasks": [t.to_json() for t in self.tasks],
            "skipped": self.skipped,
        }

    def __str__(self) -> str:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        rows = [("task", "calls", "trials", "valid", "tuned us", "rule us", "cached")]
        rows += [
            (
                t.name,
                str(t.weight),
                str(t.trials),
                str(t.valid),
                us(t.tuned_us),
                us(t.rule_us),
                "yes" if t.kept else "no",
            )
            for t in self.tasks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"tuned for {self.target} in {self.wall_s:.0f} s: {self.trials} trials, {self.kept} records kept"]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append(f"records: {self.directory}")
        lines += [f"not tuned: {name} ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


def progress_line(r: TaskResult) -> str:
    """One task's outcome, as ``fxpress tune`` prints it when the task is done."""
    if r.tuned_us is None:
        return f"{r.name}: {r.trials} trials in {r.search_s:.0f} s, nothing usable ({r.note})"
    verdict = "record cached" if r.kept else "rule kept"
    return (
        f"{r.name}: {r.trials} trials ({r.valid} valid) in {r.search_s:.0f} s, "
        f"best {r.tuned_us:.1f} us vs rule {r.rule_us:.1f} us -> {verdict}"
    )


# ------------------------------------------------------- side-by-side timing


def _random_args(func: tvm.tirx.PrimFunc, rng: np.random.Generator) -> list[tvm.runtime.Tensor]:
    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        data = rng.standard_normal(shape) if dtype.startswith("float") else rng.integers(-8, 8, shape)
        args.append(tvm.runtime.tensor(np.require(data.astype(dtype), requirements="C")))
    return args


def _time_us(func: tvm.tirx.PrimFunc, spec: TargetSpec, args: list[tvm.runtime.Tensor], symbol: str) -> float:
    """Median microseconds of `func` built alone under a unique symbol (same-named kernels clash)."""
    mod = tvm.IRModule({symbol: func.with_attr("global_symbol", symbol)})
    with spec.target:
        lib = tvm.compile(mod, target=spec.target)
    lib = getattr(lib, "mod", lib)
    timer = lib.time_evaluator(symbol, tvm.cpu(), number=1, repeat=7, min_repeat_ms=40)
    return float(np.median(timer(*args).results)) * 1e6


def _rule_func(func: tvm.tirx.PrimFunc, spec: TargetSpec) -> tvm.tirx.PrimFunc:
    """`func` as fxpress's schedule rules (what compile does without a record) schedule it."""
    with spec.target:
        return dl.ApplyDefaultSchedule(*schedule_rules(spec))(tvm.IRModule({"main": func}))["main"]


def time_side_by_side(
    task_mod: tvm.IRModule, tuned: tvm.tirx.PrimFunc, spec: TargetSpec, rng: np.random.Generator, index: int
) -> tuple[float, float]:
    """(tuned, rule) microseconds of task `index`'s function: its tuned schedule and its rule schedule."""
    args = _random_args(task_mod["main"], rng)
    tuned_us = _time_us(tuned, spec, args, f"fxpress_tuned_{index}")
    rule_us = _time_us(_rule_func(task_mod["main"], spec), spec, args, f"fxpress_rule_{index}")
    return tuned_us, rule_us
