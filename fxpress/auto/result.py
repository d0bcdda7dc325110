"""What a search returns: every evaluated point, the Pareto set, the best point, and why each layer got its method.

    result.met, result.message        # whether the budget was met; if not, the closest point, named
    result.best.pipeline              # pipeline text that reproduces the chosen model
    result.pareto                     # non-dominated points over (accuracy up, latency down, size down)
    print(result.text())              # the per-layer table: every method tried, its cost and accuracy effect
    result.to_json()                  # the same as JSON-ready data (`save` writes auto.json and auto_pareto.png)

A point's latency is measured (the whole model compiled and timed) when
``latency_measured`` is true, else estimated (the sum of its layers' measured
kernel times plus the measured rest of the model).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fxpress.auto.budget import Budget
from fxpress.reports.size import human_bytes


@dataclass
class Point:
    """One evaluated candidate."""

    pipeline: str
    methods: dict[str, str]  # layer ident -> method label
    weight_bits: int
    accuracy: float
    size_bytes: int
    estimated_ms: float
    measured_ms: float | None = None
    cpu_per_wall: float | None = None  # while the whole model was timed
    source: str = "search"  # float, int8, include, sweep, refine

    @property
    def latency(self) -> float:
        return self.measured_ms if self.measured_ms is not None else self.estimated_ms

    @property
    def latency_measured(self) -> bool:
        return self.measured_ms is not None

    def summary(self) -> str:
        how = "measured" if self.latency_measured else "estimated"
        return (
            f"accuracy {self.accuracy:.5g}, {self.latency:.4g} ms ({how}), {human_bytes(self.size_bytes)}: "
            f"{self.pipeline or '(float model)'}"
        )


@dataclass
class Trial:
    """One layer under one method, alone (every other layer float): its measured cost and accuracy effect."""

    method: str
    ms: float | None = None
    bytes: int | None = None
    accuracy: float | None = None
    delta: float | None = None  # float accuracy minus this accuracy (positive: the method costs accuracy)
    skipped: str | None = None  # why the method does not apply to this layer


@dataclass
class LayerReport:
    """A layer, the methods tried on it, and the method the best point gave it."""

    ident: str
    op: str
    weight_shape: list[int]
    input_shape: list[int]
    trials: list[Trial] = field(default_factory=list)
    chosen: str | None = None


def pareto(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats or ties on all of accuracy (up), latency and size (down), by latency."""
    front = []
    for p in points:
        dominated = any(
            q is not p
            and q.accuracy >= p.accuracy
            and q.latency <= p.latency
            and q.size_bytes <= p.size_bytes
            and (q.accuracy > p.accuracy or q.latency < p.latency or q.size_bytes < p.size_bytes)
            for q in points
        )
        if not dominated:
            front.append(p)
    unique = {p.pipeline: p for p in front}
    return sorted(unique.values(), key=lambda p: (p.latency, -p.accuracy))


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


@dataclass
class AutoResult:
    """The search's answer (see the module docstring)."""

    budget: Budget
    met: bool
    message: str
    best: Point | None
    points: list[Point]
    pareto: list[Point]
    layers: list[LayerReport]
    float_accuracy: float
    evaluation: str
    target: str
    isa: str
    threads: int
    seed: int
    rest_accuracy: float | None = None  # every layer float, the other quantizable ops int8
    int8_chain: float = 1.0  # factor on one-layer int8 times that makes the all-int8 estimate the measured model
    search_s: float = 0.0
    cpu_per_wall: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def point(self, source: str) -> Point | None:
        """The first evaluated point of `source` (``float``, ``int8``, ``include``)."""
        return next((p for p in self.points if p.source == source), None)

    def text(self) -> str:
        """The per-layer table (methods tried, cost, accuracy effect, the choice), then the Pareto set."""
        lines = [
            f"fxpress auto: {self.budget.text()} on {self.target} ({self.isa}), {self.threads} thread(s), "
            f"evaluation {self.evaluation}; float accuracy {self.float_accuracy:.5g}",
            "",
            f"{'layer':40} {'method':26} {'ms':>9} {'bytes':>10} {'accuracy':>10} {'effect':>10}",
        ]
        for layer in self.layers:
            head = f"{layer.ident} ({layer.op} {layer.weight_shape})"
            lines.append(head)
            for t in layer.trials:
                mark = "*" if t.method == layer.chosen else " "
                if t.skipped:
                    lines.append(f"  {mark} {'':37} {t.method:26} {'-':>9} {'-':>10} {'-':>10}  ({t.skipped})")
                    continue
                ms = f"{t.ms:.4f}" if t.ms is not None else "-"
                size = human_bytes(t.bytes) if t.bytes is not None else "-"
                acc = f"{t.accuracy:.5f}" if t.accuracy is not None else "-"
                delta = f"{-t.delta:+.5f}" if t.delta is not None else "-"
                lines.append(f"  {mark} {'':37} {t.method:26} {ms:>9} {size:>10} {acc:>10} {delta:>10}")
        lines += [
            "",
            "* the method of the best point; effect: the accuracy change when only this layer takes the method",
            "  (a quantized method against the int8 rest: every layer float, attention matmuls and adds int8"
            + (f", accuracy {self.rest_accuracy:.5g})" if self.rest_accuracy is not None else ")"),
            f"  ms: the one-layer graph's measured time; inside a model the search scales quantized ones by "
            f"{self.int8_chain:.3g} (no quantize/dequantize between int8 layers)",
            "",
        ]
        lines.append(f"Pareto set ({len(self.pareto)} of {len(self.points)} evaluated points):")
        for p in self.pareto:
            star = "*" if p is self.best else " "
            lines.append(f" {star} {p.summary()}")
        lines += ["", self.message]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def to_json(self) -> dict[str, Any]:
        def point(p: Point) -> dict[str, Any]:
            d = asdict(p)
            d.update(
                accuracy=_num(p.accuracy),
                estimated_ms=_num(p.estimated_ms, 5),
                measured_ms=_num(p.measured_ms, 5),
                latency_ms=_num(p.latency, 5),
                latency_measured=p.latency_measured,
                pareto=any(p is q for q in self.pareto),
                best=p is self.best,
            )
            return d

        return {
            "budget": self.budget.text(),
            "met": self.met,
            "message": self.message,
            "target": self.target,
            "isa": self.isa,
            "threads": self.threads,
            "seed": self.seed,
            "evaluation": self.evaluation,
            "float_accuracy": _num(self.float_accuracy),
            "rest_accuracy": _num(self.rest_accuracy),
            "int8_chain": round(self.int8_chain, 4),
            "search_s": round(self.search_s, 1),
            "cpu_per_wall": round(self.cpu_per_wall, 3),
            "best": point(self.best) if self.best else None,
            "pareto": [point(p) for p in self.pareto],
            "points": [point(p) for p in self.points],
            "layers": [asdict(layer) for layer in self.layers],
        }

    def save(self, directory: str | Path, stem: str = "auto") -> dict[str, str]:
        """Write ``<stem>.json`` and the Pareto plot ``<stem>_pareto.png`` into `directory`; their paths."""
        from fxpress.auto.plot import plot_pareto

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        files = {"json": str(out / f"{stem}.json"), "plot": str(out / f"{stem}_pareto.png")}
        self.files = files
        Path(files["json"]).write_text(json.dumps(self.to_json(), indent=1) + "\n")
        plot_pareto(self, files["plot"])
        return files
