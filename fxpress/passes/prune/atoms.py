"""Atoms: the finest channel indices of a graph, and the union-find that couples them.

Every dimension of every floating-point parameter starts as a row of fresh
*atoms* (one integer per index). Operations couple atoms: an elementwise add
unions index i of one operand with index i of the other; a linear unions its
input's last dimension with its weight's dimension 1. After the whole graph is
walked, a connected set of atoms is a *unit*: the smallest set of indices that
must be pruned together. A `Site` says which dimensions of a tensor carry atoms
and which atom sits at each index (``-1``: a fixed index no parameter defines).

The union-find is networkx's (`networkx.utils.UnionFind`). Atoms can also be
*frozen* (never pruned; the reason is kept as a `Blocker`) or *noted* (pruning
them is approximate, e.g. a layer_norm over them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx
import numpy as np


@dataclass(frozen=True)
class Blocker:
    """Why channels are frozen: the node, its op, a kind and a sentence.

    kind is one of ``unsupported`` (an op the analysis does not understand),
    ``output`` (a graph output: the model's output shape must not change),
    ``fixed`` (coupled with a dimension no parameter defines: a graph input or a
    constant), ``select`` (one channel is picked by index) or ``entangled`` (a
    reshape mixes two independent channel dimensions).
    """

    node: str
    op: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}"


@dataclass
class Site:
    """The dimensions of one tensor that carry channels, and the atom at each index.

    ``atoms`` has one axis per entry of ``dims`` (ascending tensor dimensions);
    a site with several dims is *joint* (a channel dimension split by a reshape,
    e.g. ``[.., 384] -> [.., 12, 32]``).
    """

    dims: tuple[int, ...]
    atoms: np.ndarray

    def moved(self, dims: Iterable[int]) -> Site:
        return Site(tuple(dims), self.atoms)


class AtomTable:
    """Allocates atoms and keeps their union-find, frozen reasons and notes."""

    def __init__(self) -> None:
        self.uf = nx.utils.UnionFind()
        self.count = 0
        self.frozen: dict[int, list[Blocker]] = defaultdict(list)
        self.notes: dict[int, set[tuple[str, str]]] = defaultdict(set)  # atom -> {(text, node)}

    def fresh(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        atoms = np.arange(self.count, self.count + n, dtype=np.int64).reshape(shape)
        self.count += n
        return atoms

    def find(self, atoms: np.ndarray) -> np.ndarray:
        """The unit (root atom) of every atom; ``-1`` stays ``-1``."""
        flat = atoms.reshape(-1)
        uf = self.uf
        roots = np.fromiter((uf[int(a)] if a >= 0 else -1 for a in flat), dtype=np.int64, count=flat.size)
        return roots.reshape(atoms.shape)

    def roots(self) -> np.ndarray:
        """The root of every atom allocated so far, as one array (for lookups once unions are done)."""
        uf = self.uf
        return np.fromiter((uf[a] for a in range(self.count)), dtype=np.int64, count=self.count)

    def _union(self, x: int, y: int) -> None:
        """networkx's union by weight, without its per-call sort (this runs ~10^5 times)."""
        uf = self.uf
        rx, ry = uf[x], uf[y]
        if rx == ry:
            return
        if uf.weights[rx] < uf.weights[ry]:
            rx, ry = ry, rx
        uf.weights[rx] += uf.weights[ry]
        uf.parents[ry] = rx

    def union_pairs(self, a: np.ndarray, b: np.ndarray, fixed: Blocker | None = None) -> None:
        """Union a[i] with b[i] (broadcast); an atom paired with a fixed index (-1) is frozen."""
        a, b = np.broadcast_arrays(a, b)
        pairs = np.unique(np.stack([a.reshape(-1), b.reshape(-1)], axis=1), axis=0)
        for x, y in pairs.tolist():
            if x >= 0 and y >= 0:
                if x != y:
                    self._union(x, y)
            elif fixed is not None and max(x, y) >= 0:
                self.frozen[max(x, y)].append(fixed)

    def union_rows(self, rows: np.ndarray) -> None:
        """Union the atoms of each row of a 2-d array (a row becomes one unit)."""
        for row in rows.tolist():
            members = [a for a in row if a >= 0]
            for other in members[1:]:
                self._union(members[0], other)

    def freeze(self, atoms: np.ndarray, blocker: Blocker) -> None:
        for a in np.unique(atoms).tolist():
            if a >= 0:
                self.frozen[a].append(blocker)

    def note(self, atoms: np.ndarray, text: str, node: str) -> None:
        for a in np.unique(atoms).tolist():
            if a >= 0:
                self.notes[a].add((text, node))
