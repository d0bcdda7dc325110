"""channel-groups: the analysis that finds every set of coupled channels in a graph.

A *group* is a set of channel dimensions that must shrink together, and the
*units* it prunes: a unit is the smallest set of indices removed at once (one
conv channel; one attention head, i.e. 32 rows of Q, K and V and 32 columns of
the output projection; one group of a grouped conv). Each group records

- ``members``: every parameter dimension it slices (parameter path, axis, and
  for each index the unit it belongs to, so offsets in a concatenation, blocks
  of H*W after a flatten and head blocks are explicit);
- ``values``: every activation dimension that carries it (for the rewrite of
  shape constants and for MAC counts);
- ``blockers``: why some or all of its units are frozen (an op the analysis does
  not understand, a graph output, a coupling with an input's fixed dim, ...);
- ``notes``: why pruning it is approximate rather than exact (a layer_norm,
  softmax or mean over its channels);
- ``dynamic``: activation dims of the group whose size is symbolic.

Built by `fxpress.passes.prune.propagate.Propagator` (a networkx union-find over
channel atoms); cached by the pass manager as the analysis ``channel-groups``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import torch
import torch.fx

from fxpress.passes.base import Analysis, AnalysisManager
from fxpress.passes.prune.atoms import Blocker, Site
from fxpress.passes.prune.propagate import Propagator

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph


@dataclass(frozen=True, eq=False)
class Member:
    """One parameter dimension of a group: ``param`` sliced along ``axis``.

    ``unit_of[i]`` is the group unit index ``i`` belongs to, or -1 when index
    ``i`` belongs to another group (the second half of a concatenation's input).
    """

    param: str
    axis: int
    node: str
    unit_of: np.ndarray
    users: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``param:axis``, the member's name in reports and tests."""
        return f"{self.param}:{self.axis}"

    @property
    def count(self) -> int:
        """Indices of this dim that belong to the group."""
        return int((self.unit_of >= 0).sum())

    @property
    def offset(self) -> int:
        """The first index that belongs to the group (a concatenation offset)."""
        return int(np.argmax(self.unit_of >= 0))

    @property
    def block(self) -> int | None:
        """Indices per unit when every unit has as many (a head: 32; after a flatten: H*W)."""
        counts = np.bincount(self.unit_of[self.unit_of >= 0])
        return int(counts[0]) if len(counts) and (counts == counts[0]).all() else None

    def indices(self, unit: int) -> np.ndarray:
        return np.nonzero(self.unit_of == unit)[0]

    def describe(self) -> str:
        block = self.block
        parts = [self.key]
        if self.count != len(self.unit_of) or self.offset:
            parts.append(f"[{self.offset}:{self.offset + self.count})" if self._contiguous() else "[scattered]")
        if block and block > 1:
            parts.append(f"x{block}")
        return "".join(parts)

    def _contiguous(self) -> bool:
        idx = np.nonzero(self.unit_of >= 0)[0]
        return bool(len(idx) and idx[-1] - idx[0] + 1 == len(idx))


@dataclass(frozen=True, eq=False)
class ValueDims:
    """An activation dim (or a joint set of dims) that carries a group."""

    node: str
    output: int
    dims: tuple[int, ...]
    unit_of: np.ndarray


@dataclass(eq=False)
class Group:
    """Coupled channels (see the module docstring)."""

    id: int
    size: int
    members: tuple[Member, ...]
    values: tuple[ValueDims, ...]
    frozen: np.ndarray
    blockers: tuple[Blocker, ...] = ()
    notes: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.members[0].param if self.members else f"group{self.id}"

    @property
    def prunable(self) -> int:
        """Units that may be pruned (not frozen)."""
        return int((~self.frozen).sum())

    @property
    def exact(self) -> bool:
        """Pruning it gives exactly the model with its channels zeroed."""
        return not self.notes

    @property
    def width(self) -> int:
        """Channels per unit at the group's first activation (heads: the head dim)."""
        first = self.values[0].unit_of
        return int((first >= 0).sum()) // max(self.size, 1)

    def member(self, key: str) -> Member:
        return next(m for m in self.members if m.key == key)

    def member_keys(self) -> list[str]:
        return [m.key for m in self.members]


@dataclass(frozen=True)
class SiteMap:
    """A channel site of one node, mapped to groups: the pass reads these."""

    dims: tuple[int, ...]
    group: np.ndarray  # per index: the group id, or -1 (never pruned)
    unit: np.ndarray  # per index: the unit within that group


@dataclass
class ChannelGroups:
    """The result of the ``channel-groups`` analysis."""

    groups: list[Group]
    blockers: list[Blocker]
    sites: dict[tuple[str, int], list[SiteMap]] = field(default_factory=dict)
    shapes: dict[str, Any] = field(default_factory=dict)  # concrete output shapes on the example inputs

    def __iter__(self) -> Any:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Group:
        return self.groups[i]

    def find(self, key: str) -> Group:
        """The group with member ``key`` (``"conv1.weight:0"``)."""
        for g in self.groups:
            if key in g.member_keys():
                return g
        raise KeyError(f"no channel group has member {key!r}")

    def to_networkx(self) -> nx.Graph:
        """A bipartite graph: group nodes ``("group", id)`` linked to member dims ``("param", key)``."""
        g = nx.Graph()
        for grp in self.groups:
            g.add_node(("group", grp.id), size=grp.size, prunable=grp.prunable)
            for m in grp.members:
                g.add_edge(("group", grp.id), ("param", m.key), count=m.count, offset=m.offset, block=m.block)
        return g

    def text(self) -> str:
        lines = []
        for g in self.groups:
            state = "frozen" if not g.prunable else f"{g.prunable}/{g.size} prunable"
            lines.append(
                f"group {g.id}: {g.size} units x{g.width} ({state}): " + ", ".join(m.describe() for m in g.members)
            )
            lines += [f"  blocked by {b}" for b in g.blockers]
            lines += [f"  approximate: {n}" for n in g.notes]
            lines += [f"  dynamic: {d}" for d in g.dynamic]
        return "\n".join(lines)


def _meta_shape(node: torch.fx.Node, output: int) -> Any:
    val = node.meta.get("val")
    if isinstance(val, list | tuple):
        val = val[output] if output < len(val) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


_Entry = tuple[torch.fx.Node, int, Site, np.ndarray]
"""A site of a node's output: (node, output index, site, the root atom of each of its channels)."""


def build_groups(graph: Graph, prop: Propagator) -> ChannelGroups:
    """Turn the propagator's atoms into groups, in graph order (see module docstring)."""
    atoms = prop.atoms
    root_of = atoms.roots()
    nodes = list(graph.nodes())
    entries = _entries(nodes, prop, root_of)
    buckets = _buckets(prop, entries)
    result = ChannelGroups(
        groups=[],
        blockers=[b for b in prop.blockers if b.kind == "unsupported"],
        shapes={n.name: prop.shapes.get(n) for n in nodes},
    )
    members, values, dynamic = _place_sites(result, prop, entries, _unit_lookup(buckets))
    frozen_by: dict[int, list[Blocker]] = defaultdict(list)
    noted: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for a, reasons in atoms.frozen.items():
        frozen_by[int(root_of[a])].extend(reasons)
    for a, pairs in atoms.notes.items():
        noted[int(root_of[a])].update(pairs)
    for gid, units in enumerate(buckets):
        blockers = list(dict.fromkeys(b for r in units for b in frozen_by.get(r, [])))
        notes = _notes({t for r in units for t in noted.get(r, set())})
        frozen = np.array([bool(frozen_by.get(r)) for r in units])
        result.groups.append(
            Group(
                gid,
                len(units),
                tuple(members[gid]),
                tuple(values[gid]),
                frozen,
                tuple(blockers),
                tuple(notes),
                tuple(dict.fromkeys(dynamic[gid])),
            )
        )
    return result


def _entries(nodes: list[torch.fx.Node], prop: Propagator, root_of: np.ndarray) -> list[_Entry]:
    """Every site of every node's outputs, in graph order, with the root atom of each channel (-1: none)."""
    entries: list[_Entry] = []
    for n in nodes:
        sites = prop.sites.get(n) or []
        per_output = sites if sites and isinstance(sites[0], list) else [sites]
        for j, out in enumerate(per_output):
            for s in out:
                entries.append((n, j, s, np.where(s.atoms >= 0, root_of[np.maximum(s.atoms, 0)], -1)))
    return entries


def _buckets(prop: Propagator, entries: list[_Entry]) -> list[list[int]]:
    """The root atoms seen in activations, bucketed by signature (the groups), in order of first appearance."""
    order: dict[int, int] = {}
    signature: dict[int, set[Any]] = defaultdict(set)
    for n, j, s, roots in entries:
        if n.op != "call_function" or prop.const.get(n, False):
            continue
        for r in roots.reshape(-1).tolist():
            if r >= 0:
                order.setdefault(r, len(order))
                signature[r].add(("value", n.name, j, s.dims))
    for n, _, s, roots in entries:
        if n.op != "get_attr":
            continue
        for r in np.unique(roots).tolist():
            if r in signature:
                signature[r].add(("param", str(n.target), s.dims[0]))
    buckets: dict[frozenset[Any], list[int]] = {}
    for r in sorted(order, key=order.__getitem__):
        buckets.setdefault(frozenset(signature[r]), []).append(r)
    return list(buckets.values())


def _unit_lookup(buckets: list[list[int]]) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Root atoms -> (group id, unit index) arrays, -1 where a root is in no group."""
    unit_index: dict[int, tuple[int, int]] = {}
    for gid, units in enumerate(buckets):
        for u, r in enumerate(units):
            unit_index[r] = (gid, u)
    keys = np.array(sorted(unit_index), dtype=np.int64)
    key_g = np.array([unit_index[r][0] for r in keys.tolist()] + [-1], dtype=np.int64)
    key_u = np.array([unit_index[r][1] for r in keys.tolist()] + [-1], dtype=np.int64)

    def lookup(roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(keys):  # no group at all (every channel frozen): every root is in none
            return np.full(roots.shape, -1, dtype=np.int64), np.full(roots.shape, -1, dtype=np.int64)
        pos = np.searchsorted(keys, roots)
        pos = np.where((pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == roots), pos, len(keys))
        return key_g[pos], key_u[pos]

    return lookup


def _place_sites(
    result: ChannelGroups,
    prop: Propagator,
    entries: list[_Entry],
    lookup: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[int, list[Member]], dict[int, list[ValueDims]], dict[int, list[str]]]:
    """Record each site's map into `result.sites`; the members, values and dynamic dims of each group."""
    members: dict[int, list[Member]] = defaultdict(list)
    values: dict[int, list[ValueDims]] = defaultdict(list)
    dynamic: dict[int, list[str]] = defaultdict(list)
    for n, j, s, roots in entries:
        gids, uids = lookup(roots)
        result.sites.setdefault((n.name, j), []).append(SiteMap(s.dims, gids, uids))
        for gid in np.unique(gids[gids >= 0]).tolist():
            unit_of = np.where(gids == gid, uids, -1)
            if n.op == "get_attr":
                users = tuple(u.name for u in n.users)
                members[gid].append(Member(str(n.target), s.dims[0], n.name, unit_of, users))
                continue
            if not prop.const.get(n, False):
                values[gid].append(ValueDims(n.name, j, s.dims, unit_of))
                shape = _meta_shape(n, j)
                for d in s.dims:
                    if shape is not None and not isinstance(shape[d], int):
                        dynamic[gid].append(f"dim {d} of %{n.name} is {shape[d]}")
    return members, values, dynamic


def _notes(pairs: set[tuple[str, str]]) -> list[str]:
    """``{(text, node)}`` -> one line per text: ``layer_norm over channels at layer_norm, layer_norm_1``."""
    by_text: dict[str, list[str]] = defaultdict(list)
    for text, node in pairs:
        by_text[text].append(node)
    return [f"{text} at {', '.join(sorted(nodes, key=_natural))}" for text, nodes in sorted(by_text.items())]


def _natural(name: str) -> tuple[str, int]:
    stem, _, num = name.rpartition("_")
    return (stem, int(num)) if num.isdigit() else (name, -1)


def analyze(graph: Graph) -> ChannelGroups:
    """The channel groups of `graph` (runs it once on its example inputs)."""
    return build_groups(graph, Propagator(graph).propagate())


class ChannelGroupsAnalysis(Analysis):
    """The ``channel-groups`` analysis: `analyze` cached by the pass manager."""

    name = "channel-groups"

    @classmethod
    def compute(cls, graph: Graph, am: AnalysisManager) -> ChannelGroups:
        return analyze(graph)
