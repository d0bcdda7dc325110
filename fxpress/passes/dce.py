"""dce: remove operations whose results nothing uses, and the parameters they held.

    %3 = aten.relu(%2)   (no users)   -> removed
    %w = param ...       (no users)   -> removed, and its tensor deleted

An operation is removed only when it is pure: fx's `is_impure` keeps in-place
and mutating ATen ops, and anything with side effects. Unused ``get_attr``
nodes are removed and their tensors deleted from the module, so the
parameter bytes in the trace go down.

Requires: nothing. Establishes: nothing. Numerics: exact (nothing that
contributes to an output is touched). Leaves alone: a graph where every value
reaches an output. Often last in a pipeline, after passes that orphan nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxpress.ir.graph import Graph
from fxpress.passes.base import AnalysisManager, Pass, PassResult


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove unused pure operations and unused parameters."""

    name = "dce"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        ops_before = sum(1 for _ in graph.nodes())
        graph.fx.eliminate_dead_code()
        freed = graph.drop_unused_params()
        removed = ops_before - sum(1 for _ in graph.nodes())
        return PassResult(
            graph, modified=removed > 0 or freed > 0, stats={"removed_nodes": removed, "freed_bytes": freed}
        )
