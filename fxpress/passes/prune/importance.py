"""Importance of the units of a channel group: which channels to prune first.

- ``l1``: the sum of |w| over every index a unit owns in every weight and bias
  of its group (producer rows, consumer columns, norm scales alike);
- ``l2``: the square root of the sum of w² over the same indices;
- ``bn-scale``: the mean |gamma| of the group's batch-norm scales (Network
  Slimming); a group without a batch norm cannot be ranked this way;
- ``taylor``: the first-order Taylor estimate of the loss change when a unit is
  removed (Molchanov et al.): per batch of `data`, ``|sum of w * dL/dw|`` over
  every parameter index the unit owns in its group, summed over the batches.
  It needs data, ``(inputs..., target)`` tuples, and a loss (default
  cross-entropy); the graph is run with autograd on detached copies of its
  parameters, so it is never changed.

Running statistics (buffers) never count: only ``nn.Parameter`` members do.
Lower is pruned first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fxpress.ir.opsets import BATCH_NORM, bind, packet
from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import Group, Member

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

IMPORTANCE = ("l1", "l2", "bn-scale", "taylor")
TAYLOR_HOW = (
    "give data in Python: PruneChannels(importance='taylor', data=[(x, y), ...]) (one (inputs..., target) "
    "tuple per batch; loss= a loss(output, target), default cross-entropy), or plan_pruning(..., data=...)"
)
Loss = Callable[[Any, torch.Tensor], torch.Tensor]


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
        if packet(user) in BATCH_NORM and bind(user.target, user.args, user.kwargs).get("weight") is node:
            return True
    return False


def importance(
    graph: Graph, group: Group, kind: str = "l1", *, data: Iterable[Any] | None = None, loss: Loss | None = None
) -> np.ndarray:
    """One score per unit of `group` (see the module docstring); lower is pruned first."""
    return importances(graph, [group], kind, data=data, loss=loss)[group.id]


def importances(
    graph: Graph,
    groups: Sequence[Group],
    kind: str = "l1",
    *,
    data: Iterable[Any] | None = None,
    loss: Loss | None = None,
) -> dict[int, np.ndarray]:
    """Group id -> `importance` of its units, for `groups` (taylor runs the data once for all of them)."""
    if kind not in IMPORTANCE:
        raise PruneError(f"unknown importance {kind!r}; choose one of {', '.join(IMPORTANCE)}")
    if kind == "taylor":
        return _taylor(graph, groups, data, loss or F.cross_entropy)
    return {g.id: _magnitude(graph, g, kind) for g in groups}


def _magnitude(graph: Graph, group: Group, kind: str) -> np.ndarray:
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


def _taylor(graph: Graph, groups: Sequence[Group], data: Iterable[Any] | None, loss: Loss) -> dict[int, np.ndarray]:
    if data is None or isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise PruneError(f"importance 'taylor' needs data (it ranks channels by loss gradients); {TAYLOR_HOW}")
    if not groups:
        return {}
    gm = graph.gm
    leaves = {id(p): p.detach().clone().requires_grad_(p.is_floating_point()) for p in gm.parameters()}
    swapped = {name: leaves[id(p)] for name, p in gm.named_parameters(remove_duplicate=False)}
    scores = {g.id: np.zeros(g.size) for g in groups}
    batches = 0
    for item in data:
        if not isinstance(item, tuple | list) or len(item) != len(graph.inputs) + 1:
            raise PruneError(
                f"importance 'taylor': data[{batches}] must be a tuple of {len(graph.inputs)} input tensor(s) "
                f"({', '.join(graph.input_names)}) and a target; {TAYLOR_HOW}"
            )
        for leaf in leaves.values():
            leaf.grad = None
        with torch.enable_grad():
            loss(torch.func.functional_call(gm, swapped, tuple(item[:-1])), item[-1]).backward()
        products = {k: (v.detach() * v.grad).double() for k, v in leaves.items() if v.grad is not None}
        for g in groups:
            scores[g.id] += np.abs(_unit_sums(graph, g, products))
        batches += 1
    if batches == 0:
        raise PruneError(f"importance 'taylor': the data is empty (an exhausted generator?); {TAYLOR_HOW}")
    return scores


def _unit_sums(graph: Graph, group: Group, products: dict[int, torch.Tensor]) -> np.ndarray:
    """Per unit of `group`: the sum of w * dL/dw over every parameter index it owns (`products` by tensor id)."""
    out = np.zeros(group.size)
    for m in group.members:
        t = graph.param(m.param)
        if isinstance(t, torch.nn.Parameter) and id(t) in products:
            wg = products[id(t)]
            other = [d for d in range(wg.dim()) if d != m.axis]
            _accumulate(out, m, (wg.sum(dim=other) if other else wg).numpy())
    return out
