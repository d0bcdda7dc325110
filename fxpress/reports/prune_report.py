"""prune-report: what a pruning ratio would do, before anything is changed.

    report = prune_report(graph, 0.5, round_to=8)
    print(report.text())        # one row per channel group, then the totals
    report.as_dict()            # the same as JSON-ready data

For every channel group: its size (units) and width (channels per unit), how
many units the ratio keeps, its members, and what blocks it (a graph output, an
op the analysis does not understand, ...) or makes it approximate. The totals
are parameters and multiply-accumulates (conv, linear, matmul, attention) on
the graph's example inputs, before and after; both are computed from the shapes
the pruned graph would have, so they are what `prune-channels` will deliver.

A report, so it sits above the passes: it reads the ``channel-groups``
analysis and the pruning plan of ``fxpress.passes.prune`` and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from fxpress.ir.opsets import CONV, CONV_TRANSPOSE, MATMUL, bind, is_transposed_conv, packet
from fxpress.passes.base import AnalysisManager
from fxpress.passes.prune.groups import ChannelGroups, ChannelGroupsAnalysis
from fxpress.passes.prune.importance import Loss
from fxpress.passes.prune.plan import PrunePlan, plan_pruning, pruned_shape

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

aten = torch.ops.aten


def node_macs(n: torch.fx.Node, shape: Callable[[Any], Any]) -> int:
    """Multiply-accumulates of one op, given the shapes of its operands and output."""
    op = packet(n)
    if op is None:
        return 0
    b = bind(n.target, n.args, n.kwargs)
    out = shape(n)
    if op in CONV | CONV_TRANSPOSE:
        w, x = shape(b["weight"]), shape(b["input"])
        per = math.prod(w[1:])
        return math.prod(x) * per if is_transposed_conv(n) else math.prod(out) * per
    if op is aten.linear:
        return math.prod(out) * shape(b["weight"])[1]
    if op in MATMUL:
        return math.prod(out) * shape(b["self"])[-1]
    if op is aten.addmm:
        return math.prod(out) * shape(b["mat1"])[-1]
    if op is aten.scaled_dot_product_attention:
        q, k, v = shape(b["query"]), shape(b["key"]), shape(b["value"])
        return math.prod(q[:-1]) * k[-2] * q[-1] + math.prod(out[:-1]) * k[-2] * v[-1]
    return 0


def _totals(graph: Graph, groups: ChannelGroups, plan: PrunePlan) -> tuple[int, int]:
    """(parameters, MACs) of `graph` after `plan` (an empty plan: as it is)."""

    def shape(a: Any) -> Any:
        s = groups.shapes.get(a.name)
        return pruned_shape(groups, a.name, 0, s, plan) if isinstance(s, tuple) else s

    params = sum(math.prod(shape(n)) for n in graph.nodes("get_attr") if graph.param(n).is_floating_point())
    macs = sum(node_macs(n, shape) for n in graph.nodes("call_function"))
    return params, macs


@dataclass
class GroupRow:
    id: int
    name: str
    units: int
    width: int
    keep: int
    members: list[str]
    blockers: list[str]
    notes: list[str]
    dynamic: list[str]

    @property
    def status(self) -> str:
        if self.keep < self.units:
            return "pruned" + ("" if not self.notes else " (approximate)")
        if self.blockers and self.keep == self.units:
            return "frozen: " + self.blockers[0]
        return "kept"


@dataclass
class PruneReport:
    """The groups of a graph and the reduction a ratio gives (see the module docstring)."""

    model: str
    ratio: float
    options: dict[str, Any]
    rows: list[GroupRow] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    blockers: list[str] = field(default_factory=list)

    @staticmethod
    def _pct(before: int, after: int) -> str:
        return f"{100.0 * (after - before) / before:+.1f}%" if before else "n/a"

    def text(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        head = ("group", "units", "width", "keep", "members", "status")
        body = [
            (f"{r.id} {r.name}", str(r.units), str(r.width), str(r.keep), str(len(r.members)), r.status)
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"prune-report {self.model}: ratio {self.ratio} ({opts})"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
        lines.append(
            f"parameters {self.params_before} -> {self.params_after} ({self._pct(self.params_before, self.params_after)})"
        )
        lines.append(f"MACs {self.macs_before} -> {self.macs_after} ({self._pct(self.macs_before, self.macs_after)})")
        lines += [f"blocker: {b}" for b in self.blockers]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ratio": self.ratio,
            "options": dict(self.options),
            "groups": [
                {
                    "id": r.id,
                    "name": r.name,
                    "units": r.units,
                    "width": r.width,
                    "keep": r.keep,
                    "status": r.status,
                    "members": list(r.members),
                    "blockers": list(r.blockers),
                    "notes": list(r.notes),
                    "dynamic": list(r.dynamic),
                }
                for r in self.rows
            ],
            "params": {"before": self.params_before, "after": self.params_after},
            "macs": {"before": self.macs_before, "after": self.macs_after},
            "blockers": list(self.blockers),
        }


def prune_report(
    graph: Graph,
    ratio: float = 0.5,
    *,
    per_layer: bool = True,
    round_to: int = 1,
    importance: str = "l1",
    protected: Sequence[str] = (),
    am: AnalysisManager | None = None,
    data: Iterable[Any] | None = None,
    loss: Loss | None = None,
) -> PruneReport:
    """What pruning `graph` at `ratio` would remove (see the module docstring); changes nothing.

    `data` and `loss` feed the ``taylor`` importance, as for ``prune-channels``.
    """
    groups: ChannelGroups = (am or AnalysisManager(graph)).get(ChannelGroupsAnalysis)
    plan = plan_pruning(
        graph,
        groups,
        ratio,
        per_layer=per_layer,
        round_to=round_to,
        importance_kind=importance,
        protected=protected,
        data=data,
        loss=loss,
    )
    options = {"per-layer": per_layer, "round-to": round_to, "importance": importance}
    if protected:
        options["protected"] = list(protected)
    report = PruneReport(graph.model_name, float(ratio), options)
    for g in groups:
        report.rows.append(
            GroupRow(
                g.id,
                g.name,
                g.size,
                g.width,
                plan.kept(g),
                [m.describe() for m in g.members],
                [str(b) for b in g.blockers],
                list(g.notes),
                list(g.dynamic),
            )
        )
    report.params_before, report.macs_before = _totals(graph, groups, PrunePlan(0.0))
    report.params_after, report.macs_after = _totals(graph, groups, plan)
    report.blockers = [str(b) for b in groups.blockers]
    return report
