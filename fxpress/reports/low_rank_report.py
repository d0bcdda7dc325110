"""low-rank-report: what a low-rank request would do to each layer, and what each choice costs, before anything changes.

    report = low_rank_report(graph, ratio=0.5, data=batches)   # any `LowRankRequest` option, or request=LowRank(...)
    print(report.text())          # one row per linear / conv layer, then the totals
    report.as_dict()              # the same as JSON-ready data

Rows come from the very plan the ``low-rank`` pass applies
(`fxpress.lowrank.plan_low_rank`), so a rank printed here is the rank the pass
takes. Per layer: the weight's shape, the method, the rank and what chose it
(``ranks``, ``energy=E``, ``ratio=R``), weights and multiply-adds before and
after (MACs on the graph's example inputs), and the relative weight error
``||W - W_r||_F / ||W||_F``; or why the layer stays as it is (a grouped conv,
factors not smaller, not selected, ...).

Given calibration batches (`data`: tuples of inputs, as ``calibrate`` takes
them), in float64 over all batches and elements together:

- ``layer_error``: the layer's output with its factors against its original
  output, both on the original model's activations (``||y_r - y|| / ||y||``):
  the error the layer adds by itself;
- ``model_error`` / ``model_cosine``: the model's output with only this layer
  factorized against the original model's: its sensitivity;
- on the report, ``model_error`` / ``model_cosine`` with every planned layer
  factorized (what the pass gives before any fine-tuning).

Cost per batch: one run of the original graph (all layer errors at once), one
per factorized layer, one with all of them. The graph is run through an fx
Interpreter that swaps a layer's output for its factors' (the eager reference
`Factorization.forward`), so nothing is copied or changed. A report, so it
sits above the passes: it reads the plan and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from fxpress.ir.opsets import bind
from fxpress.lowrank.factors import Factorization
from fxpress.lowrank.plan import LayerPlan, LowRankRequest, plan_low_rank

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph


class _Swap(torch.fx.Interpreter):
    """Run a graph; at the named ops, measure the factors' output and, for those in `use`, pass it on."""

    def __init__(self, gm: torch.fx.GraphModule, factors: dict[str, Factorization], use: set[str]) -> None:
        super().__init__(gm)
        self.factors, self.use = factors, use
        self.sums: dict[str, list[float]] = {}  # op -> [sum (y_r - y)^2, sum y^2]

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.name not in self.factors:
            return out
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        b = bind(n.target, args, kwargs)
        new = self.factors[n.name].forward(b["input"], b.get("bias"))
        acc = self.sums.setdefault(n.name, [0.0, 0.0])
        acc[0] += float(((new.double() - out.double()) ** 2).sum())
        acc[1] += float((out.double() ** 2).sum())
        return new if n.name in self.use else out


def _flat(out: Any) -> torch.Tensor:
    leaves = out if isinstance(out, list | tuple) else [out]
    return torch.cat([t.detach().double().reshape(-1) for t in leaves if isinstance(t, torch.Tensor)])


class _Compare:
    """Accumulates the relative error and cosine of outputs against references."""

    def __init__(self) -> None:
        self.diff = self.ref = self.out = self.dot = 0.0

    def add(self, ref: torch.Tensor, out: torch.Tensor) -> None:
        self.diff += float(((out - ref) ** 2).sum())
        self.ref += float((ref**2).sum())
        self.out += float((out**2).sum())
        self.dot += float((out * ref).sum())

    @property
    def error(self) -> float:
        return math.sqrt(self.diff / self.ref) if self.ref else 0.0

    @property
    def cosine(self) -> float:
        return self.dot / math.sqrt(self.ref * self.out) if self.ref and self.out else 1.0


@dataclass
class LowRankReport:
    """The plan of a low-rank request, its costs and errors (see the module docstring)."""

    model: str
    options: dict[str, Any]
    rows: list[LayerPlan] = field(default_factory=list)
    layer_error: dict[str, float] = field(default_factory=dict)  # op name -> relative error
    model_error: dict[str, float] = field(default_factory=dict)  # op name -> relative error
    model_cosine: dict[str, float] = field(default_factory=dict)
    total_error: float | None = None
    total_cosine: float | None = None
    batches: int = 0

    @property
    def factorized(self) -> list[LayerPlan]:
        return [r for r in self.rows if r.factorized]

    def totals(self) -> dict[str, int]:
        """Weights and MACs of every linear / conv layer the plan covers, before and after."""
        rows = [r for r in self.rows if r.weights[0]]
        return {
            "weights_before": sum(r.weights[0] for r in rows),
            "weights_after": sum(r.weights[1] if r.factorized else r.weights[0] for r in rows),
            "macs_before": sum(r.macs[0] for r in rows),
            "macs_after": sum(r.macs[1] if r.factorized else r.macs[0] for r in rows),
        }

    def text(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        head = ("layer", "shape", "method", "rank", "by", "weights", "MACs", "w.err", "layer", "model", "status")
        body = [self._cells(r) for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"low-rank-report {self.model}: {opts or 'defaults'}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
        t = self.totals()
        lines.append(
            f"{len(self.factorized)} of {len(self.rows)} layers factorized; linear/conv weights "
            f"{_si(t['weights_before'])} -> {_si(t['weights_after'])} "
            f"({_pct(t['weights_before'], t['weights_after'])}), MACs {_si(t['macs_before'])} -> "
            f"{_si(t['macs_after'])} ({_pct(t['macs_before'], t['macs_after'])})"
        )
        if self.total_error is not None:
            lines.append(
                f"model output with all of them, {self.batches} batches: relative error {self.total_error:.4f}, "
                f"cosine {self.total_cosine:.4f}"
            )
        else:
            lines.append("(give calibration data for each layer's and the model's output error)")
        return "\n".join(lines)

    def _cells(self, r: LayerPlan) -> tuple[str, ...]:
        shape = "x".join(map(str, r.shape))
        rank = "x".join(map(str, r.rank)) if r.rank else "-"
        moved = r.factorized or r.status.startswith("left alone: factors")
        weights = f"{_si(r.weights[0])}->{_si(r.weights[1])}" if moved else (_si(r.weights[0]) if r.weights[0] else "-")
        macs = f"{_si(r.macs[0])}->{_si(r.macs[1])}" if moved else (_si(r.macs[0]) if r.macs[0] else "-")
        werr = f"{r.error:.4f}" if r.error is not None else "-"
        lerr = f"{self.layer_error[r.op]:.4f}" if r.op in self.layer_error else "-"
        merr = f"{self.model_error[r.op]:.4f}" if r.op in self.model_error else "-"
        status = "" if r.factorized else r.status
        return (r.layer, shape, r.method or "-", rank, r.chosen_by or "-", weights, macs, werr, lerr, merr, status)

    def __str__(self) -> str:
        return self.text()

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "options": dict(self.options),
            "layers": [
                {
                    "layer": r.layer,
                    "op": r.op,
                    "kind": r.kind,
                    "shape": list(r.shape),
                    "status": r.status,
                    "method": r.method,
                    "rank": list(r.rank),
                    "chosen_by": r.chosen_by,
                    "weights": {"before": r.weights[0], "after": r.weights[1] if r.factorized else r.weights[0]},
                    "macs": {"before": r.macs[0], "after": r.macs[1] if r.factorized else r.macs[0]},
                    "weight_error": r.error,
                    "layer_error": self.layer_error.get(r.op),
                    "model_error": self.model_error.get(r.op),
                    "model_cosine": self.model_cosine.get(r.op),
                }
                for r in self.rows
            ],
            "totals": self.totals(),
            "batches": self.batches,
            "model_error": self.total_error,
            "model_cosine": self.total_cosine,
        }


def _si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _pct(before: int, after: int) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else "n/a"


def low_rank_report(
    graph: Graph,
    request: LowRankRequest | None = None,
    *,
    data: Iterable[Sequence[torch.Tensor]] | None = None,
    limit: int = 0,
    **options: Any,
) -> LowRankReport:
    """Plan `request` (or a `LowRankRequest` of `options`) on `graph` and measure it on `data`; changes nothing.

    `limit` > 0 uses only the first `limit` batches of `data`.
    """
    if request is not None and options:
        raise TypeError("give a request or its options, not both")
    req = request.low_rank_request() if request is not None else LowRankRequest(**options)
    rows = plan_low_rank(graph, req)
    defaults = LowRankRequest()
    shown = {k.replace("_", "-"): v for k, v in vars(req).items() if v != getattr(defaults, k)}
    report = LowRankReport(graph.model_name, shown, rows)
    if data is None:
        return report
    factors = {r.op: r.factorization for r in rows if r.factorized and r.factorization is not None}
    per_model = {op: _Compare() for op in factors}
    total = _Compare()
    layer_sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for index, batch in enumerate(data):
            if limit and index >= limit:
                break
            base = _Swap(graph.gm, factors, set())
            ref = _flat(base.run(*batch))
            for op, (diff, norm) in base.sums.items():
                acc = layer_sums.setdefault(op, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + diff, acc[1] + norm
            for op in factors:
                per_model[op].add(ref, _flat(_Swap(graph.gm, {op: factors[op]}, {op}).run(*batch)))
            total.add(ref, _flat(_Swap(graph.gm, factors, set(factors)).run(*batch)))
            report.batches += 1
    report.layer_error = {op: math.sqrt(d / n) if n else 0.0 for op, (d, n) in layer_sums.items()}
    report.model_error = {op: c.error for op, c in per_model.items()}
    report.model_cosine = {op: c.cosine for op, c in per_model.items()}
    if report.batches:
        report.total_error, report.total_cosine = total.error, total.cosine
    return report
