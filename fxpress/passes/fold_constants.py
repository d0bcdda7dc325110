"""fold-constants: evaluate operations whose inputs are all constants, once.

    %wt = aten.t(%linear.weight)            -> %wt = param (the transposed tensor)
    %s  = aten.mul.Tensor(%scale, 2.0)      -> %s  = param (the product)

A node is constant when it is a pure ATen call (not random, not mutating) all
of whose tensor inputs are parameters or other constant nodes. Each maximal
constant subgraph whose value a non-constant node uses is computed in eager
PyTorch and stored as a new parameter; the now-dead constant nodes are
removed. A result larger than `max_growth` times the bytes of the parameters it
reads is not materialized (folding ``expand`` would only cost memory).

Requires: nothing. Establishes: nothing; invalidates ``observed`` and
``calibrated`` (a folded value becomes a new parameter without the observer
slot or parameters its node had). Numerics: the folded values are exact
(the same ATen kernels run, ahead of time); an op that read a view (``aten.t``)
now reads a contiguous tensor, which may change its float rounding in the last
bit. Leaves alone: graphs whose every op depends on an input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from fxpress.ir.graph import Graph
from fxpress.ir.properties import WEIGHT_DEPENDENT
from fxpress.passes.base import AnalysisManager, Pass, PassResult


def _foldable(node: torch.fx.Node) -> bool:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    return isinstance(node.meta.get("val"), torch.Tensor)


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Precompute constant subexpressions (see the module docstring)."""

    name = "fold-constants"
    invalidates = WEIGHT_DEPENDENT
    max_growth: float = 1.0

    def __post_init__(self) -> None:
        if self.max_growth <= 0:
            raise ValueError(f"max-growth must be > 0, got {self.max_growth}")

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        values: dict[torch.fx.Node, torch.Tensor] = {}
        sources: dict[torch.fx.Node, int] = {}  # bytes of the parameters a constant reads
        for node in graph.nodes():
            if node.op == "get_attr":
                values[node] = graph.param(node)
                sources[node] = _bytes(values[node])
            elif _foldable(node) and all(a in values for a in node.all_input_nodes):
                op = node.target
                assert isinstance(op, torch._ops.OpOverload)  # _foldable
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: values[a])
                with torch.no_grad():
                    values[node] = op(*args, **kwargs)
                sources[node] = sum(sources[a] for a in node.all_input_nodes)
        folded = 0
        for node, value in values.items():
            if node.op == "get_attr" or all(u in values for u in node.users):
                continue
            if _bytes(value) > self.max_growth * max(sources[node], 1):
                continue
            const = graph.add_param(f"{node.name}_const", value, before=node)
            node.replace_all_uses_with(const)
            folded += 1
        if folded:
            graph.fx.eliminate_dead_code()
            graph.drop_unused_params()
        return PassResult(graph, modified=folded > 0, stats={"folded": folded})
