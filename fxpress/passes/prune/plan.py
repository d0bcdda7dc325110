"""Which units of which channel groups to prune: ratio, rounding, protection, checks.

`plan_pruning` turns a request (``ratio``, per layer or global, ``round_to``,
an importance, protected names) into a `PrunePlan`: for each group, the sorted
unit indices to remove. It is shared by ``prune-report`` (what a ratio would
do) and ``prune-channels`` (doing it), and it is where bad requests fail, each
with a `PruneError` that says what to change:

- a ratio outside [0, 1);
- a ratio that would remove every channel of a group (a layer would vanish);
- a protected name that is neither a node nor a module path of the graph;
- pruning a group whose channels reach a dimension of symbolic size.

Per layer, each group loses ``round(ratio * units)`` of its units (never a
frozen one); globally, the units of all prunable groups are ranked together by
importance normalized to each group's mean. Either way the kept count is
rounded *up* until ``kept * width`` is a multiple of ``round_to`` (8 or 16 for
the int8 kernels). Ratios are relative to the unpruned model: a parameter
already pruned carries a `ChannelsPruned` annotation with its original shape,
so planning again for the same ratio removes nothing.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.fx

from fxpress.ir.annotations import Annotation, get
from fxpress.passes.prune.errors import PruneError
from fxpress.passes.prune.groups import ChannelGroups, Group, SiteMap
from fxpress.passes.prune.importance import IMPORTANCE, Loss, importances

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph


@dataclass(frozen=True)
class ChannelsPruned(Annotation):
    """On a pruned parameter's get_attr node: its shape before any pruning."""

    key = "channels-pruned"
    original: tuple[int, ...]

    def check(self, node: torch.fx.Node) -> str | None:
        val = node.meta.get("val")
        if val is None or len(val.shape) != len(self.original):
            return None
        if any(int(now) > int(was) for now, was in zip(val.shape, self.original, strict=True)):
            return f"shape {tuple(val.shape)} is larger than the original {self.original}"
        return None

    def text(self) -> str:
        return "pruned from [" + ",".join(str(d) for d in self.original) + "]"


@dataclass(frozen=True)
class PrunePlan:
    """Per group id, the sorted unit indices to remove."""

    ratio: float
    removed: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(len(r) for r in self.removed.values())

    def kept(self, group: Group) -> int:
        return group.size - len(self.removed.get(group.id, ()))

    def keep_mask(self, site: SiteMap) -> np.ndarray:
        """For each index of a site: is it kept?"""
        mask = np.ones(site.group.shape, dtype=bool)
        for gid, units in self.removed.items():
            if len(units):
                mask &= ~((site.group == gid) & np.isin(site.unit, units))
        return mask


def site_kept(site: SiteMap, plan: PrunePlan) -> list[np.ndarray]:
    """Per dim of a site, the kept indices; the kept set must be their product (a dense tensor)."""
    mask = plan.keep_mask(site)
    axes = [mask.any(axis=tuple(a for a in range(mask.ndim) if a != i)) for i in range(mask.ndim)]
    product = np.ones_like(mask)
    for i, keep in enumerate(axes):
        product &= keep.reshape([-1 if a == i else 1 for a in range(mask.ndim)])
    if not (product == mask).all():
        raise PruneError(f"pruning leaves a non-rectangular set of channels on dims {site.dims}")
    return [np.nonzero(k)[0] for k in axes]


def pruned_shape(
    groups: ChannelGroups, node: str, output: int, shape: Sequence[Any], plan: PrunePlan
) -> tuple[Any, ...]:
    """`shape` of a node's output after `plan`: each pruned channel dim shrinks to its kept count."""
    new = list(shape)
    for site in groups.sites.get((node, output), []):
        for d, kept in zip(site.dims, site_kept(site, plan), strict=True):
            if len(kept) != site.group.shape[site.dims.index(d)]:
                new[d] = len(kept)
    return tuple(new)


def _original_units(graph: Graph, group: Group, nodes: dict[str, torch.fx.Node]) -> int:
    """The group's unit count before any pruning (from `ChannelsPruned` annotations)."""
    for m in group.members:
        note = get(nodes[m.node], ChannelsPruned.key)
        if isinstance(note, ChannelsPruned) and m.count == len(m.unit_of):
            return group.size * note.original[m.axis] // len(m.unit_of)
    return group.size


def resolve_protected(graph: Graph, names: Sequence[str]) -> list[torch.fx.Node]:
    """The op nodes named by `names`: fx node names, or module paths owning parameters."""
    found: list[torch.fx.Node] = []
    nodes = {n.name: n for n in graph.nodes()}
    attrs = [n for n in graph.nodes("get_attr")]
    for name in names:
        if name in nodes and nodes[name].op == "call_function":
            found.append(nodes[name])
            continue
        owned = [a for a in attrs if str(a.target) == name or str(a.target).startswith(name + ".")]
        if name in nodes and nodes[name].op == "get_attr":
            owned.append(nodes[name])
        users = [u for a in owned for u in a.users if u.op == "call_function"]
        if not users:
            modules = sorted({str(a.target).rpartition(".")[0] for a in attrs} - {""})
            close = difflib.get_close_matches(name, list(nodes) + modules, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PruneError(
                f"protected node {name!r} does not exist in the graph{hint}; name an op node "
                f"(e.g. {next(iter(n for n in nodes if nodes[n].op == 'call_function'), '?')!r}) "
                f"or a module path (e.g. {modules[0] if modules else '?'!r})"
            )
        found.extend(dict.fromkeys(users))
    return found


def check_options(ratio: float, round_to: int, kind: str) -> None:
    if not isinstance(ratio, int | float) or not 0 <= ratio < 1 or math.isnan(ratio):
        raise PruneError(f"ratio must be in [0, 1) (the fraction of channels to remove), got {ratio!r}")
    if round_to < 1:
        raise PruneError(f"round-to must be a positive channel multiple (1, 8, 16), got {round_to}")
    if kind not in IMPORTANCE:
        raise PruneError(f"unknown importance {kind!r}; choose one of {', '.join(IMPORTANCE)}")


def _round_up(kept: int, size: int, width: int, round_to: int) -> int:
    while kept < size and (kept * width) % round_to:
        kept += 1
    return kept


def plan_pruning(
    graph: Graph,
    groups: ChannelGroups,
    ratio: float,
    *,
    per_layer: bool = True,
    round_to: int = 1,
    importance_kind: str = "l1",
    protected: Sequence[str] = (),
    data: Iterable[Any] | None = None,
    loss: Loss | None = None,
) -> PrunePlan:
    """Choose the units to remove (see the module docstring); `data` and `loss` feed ``taylor``."""
    check_options(ratio, round_to, importance_kind)
    frozen = {g.id: g.frozen.copy() for g in groups}
    for node in resolve_protected(graph, protected):
        for site in groups.sites.get((node.name, 0), []):
            for gid, unit in zip(site.group.reshape(-1).tolist(), site.unit.reshape(-1).tolist(), strict=True):
                if gid >= 0:
                    frozen[gid][unit] = True
    nodes = {n.name: n for n in graph.nodes()}
    live = [g for g in groups if (~frozen[g.id]).any()]
    original = {g.id: _original_units(graph, g, nodes) for g in live}
    scores = importances(graph, live, importance_kind, data=data, loss=loss)
    target: dict[int, int] = {}
    if per_layer:
        for g in live:
            keep = original[g.id] - math.floor(original[g.id] * ratio + 0.5)
            target[g.id] = max(0, g.size - keep)
    else:
        target = _global_targets(live, frozen, original, scores, ratio)
    removed: dict[int, np.ndarray] = {}
    for g in live:
        n_remove = min(target.get(g.id, 0), int((~frozen[g.id]).sum()))
        if n_remove == 0:
            continue
        if n_remove >= g.size:
            raise PruneError(
                f"ratio {ratio} would remove every channel of group {g.id} ({g.name}: {g.size} units); "
                "lower the ratio or protect that layer"
            )
        if g.dynamic:
            raise PruneError(
                f"cannot prune group {g.id} ({g.name}): its channels reach a dynamic dimension ({g.dynamic[0]}); "
                "capture with a static size for that dimension, or protect the layer"
            )
        kept = _round_up(g.size - n_remove, g.size, g.width, round_to)
        candidates = np.nonzero(~frozen[g.id])[0]
        ranked = candidates[np.lexsort((candidates, scores[g.id][candidates]))]
        removed[g.id] = np.sort(ranked[: g.size - kept])
    return PrunePlan(float(ratio), removed)


def _global_targets(
    live: list[Group],
    frozen: dict[int, np.ndarray],
    original: dict[int, int],
    scores: dict[int, np.ndarray],
    ratio: float,
) -> dict[int, int]:
    """How many units each group loses when all units are ranked together."""
    total = sum(original.values())
    already = sum(original[g.id] - g.size for g in live)
    budget = math.floor(total * ratio + 0.5) - already
    pool: list[tuple[float, int, int]] = []
    for g in live:
        s = scores[g.id]
        norm = s / (s.mean() if s.mean() > 0 else 1.0)
        pool += [(float(norm[u]), g.id, int(u)) for u in np.nonzero(~frozen[g.id])[0]]
    pool.sort()
    target: dict[int, int] = {}
    for _, gid, _ in pool[: max(budget, 0)]:
        target[gid] = target.get(gid, 0) + 1
    return target
