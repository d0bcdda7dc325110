"""Input second moments of chosen layers on calibration data, for the data-aware SVD.

    moments = input_moments(graph, {"linear_3", "conv2d"}, batches)   # op name -> E[x x^T], float64

Runs the graph on each batch through an fx Interpreter (nothing is copied or
changed) and, at each named ``aten.linear`` / ``aten.conv2d``, accumulates
``X^T X`` of the rows the op multiplies its weight with: a linear's input
rows, a conv's im2col patches (`torch.nn.functional.unfold` with the conv's
kernel, stride, padding and dilation, ordered ``(channel, ky, kx)`` like the
weight's ``[O, I*kh*kw]`` matrix), divided by the number of rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F

from fxpress.ir.opsets import bind

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

aten = torch.ops.aten


def _rows(target: Any, b: dict[str, Any]) -> torch.Tensor:
    x, w = b["input"], b["weight"]
    if target == aten.linear.default:
        return x.reshape(-1, w.shape[1])
    kernel = tuple(w.shape[2:])
    cols = F.unfold(x, kernel, dilation=b["dilation"], padding=b["padding"], stride=b["stride"])
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class _Tap(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, ops: Collection[str], sums: dict[str, list[Any]]) -> None:
        super().__init__(gm)
        self.ops, self.sums = ops, sums

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.name in self.ops:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            rows = _rows(n.target, bind(n.target, args, kwargs)).double()
            acc = self.sums.setdefault(n.name, [0.0, 0])
            acc[0] = acc[0] + rows.T @ rows
            acc[1] += rows.shape[0]
        return super().run_node(n)


def input_moments(
    graph: Graph, ops: Collection[str], data: Iterable[Sequence[torch.Tensor]], limit: int = 0
) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` of the rows each op in `ops` multiplies its weight with, over `data` (the first `limit` batches)."""
    sums: dict[str, list[Any]] = {}
    with torch.no_grad():
        for index, batch in enumerate(data):
            if limit and index >= limit:
                break
            _Tap(graph.gm, set(ops), sums).run(*batch)
    return {op: total / count for op, (total, count) in sums.items() if count}
