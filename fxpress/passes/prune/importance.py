"""Importance of the units of a channel group: which channels to prune first.

- ``l1``: the sum of |w| over every index a unit owns in every weight and bias
  of its group (producer rows, consumer columns, norm scales alike);
- ``l2``: the square root of the sum of w² over the same indices;
- ``bn-scale``: the mean |gamma| of the group's batch-norm scales (Network
  Slimming); a group without a batch norm cannot be ranked this way.

Running statistics (buffers) never count: only ``nn.Parameter`` members do.
Lower is pruned first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import Group, Member
from fxpress.passes.prune.ops import aten, bind

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

IMPORTANCE = ("l1", "l2", "bn-scale")
_BN = {aten.batch_norm, aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit}


def _per_index(t: torch.Tensor, axis: int, power: int) -> np.ndarray:
    v = t.detach().double().abs() ** power
    other = [d for d in range(v.dim()) if d != axis]
    return (v.sum(dim=other) if other else v).numpy()


def _accumulate(score: np.ndarray, m: Member, values: np.ndarray) -> None:
    inside = m.unit_of >= 0
    np.add.at(score, m.unit_of[inside], values[inside])


def _is_bn_weight(graph: Graph, m: Member) -> bool:
    node = next((n for n in graph.nodes("get_attr") if n.name == m.node), None)
    if node is None:
        return False
    for user in node.users:
        if (
            getattr(user.target, "overloadpacket", None) in _BN
            and bind(user.target, user.args, user.kwargs).get("weight") is node
        ):
            return True
    return False


def importance(graph: Graph, group: Group, kind: str = "l1") -> np.ndarray:
    """One score per unit of `group` (see the module docstring); lower is pruned first."""
    if kind not in IMPORTANCE:
        raise PruneError(f"unknown importance {kind!r}; choose one of {', '.join(IMPORTANCE)}")
    score = np.zeros(group.size)
    if kind == "bn-scale":
        scales = [m for m in group.members if _is_bn_weight(graph, m)]
        if not scales:
            raise PruneError(
                f"importance 'bn-scale' needs a batch-norm scale in group {group.id} ({group.name}); "
                "use l1 or l2, or rank before fold-bn"
            )
        count = np.zeros(group.size)
        for m in scales:
            _accumulate(score, m, _per_index(graph.param(m.param), m.axis, 1))
            _accumulate(count, m, np.ones(len(m.unit_of)))
        return score / np.maximum(count, 1)
    power = 1 if kind == "l1" else 2
    for m in group.members:
        t = graph.param(m.param)
        if isinstance(t, torch.nn.Parameter):
            _accumulate(score, m, _per_index(t, m.axis, power))
    return score if kind == "l1" else np.sqrt(score)
