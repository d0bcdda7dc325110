"""annotate-sparsity: measure each linear/conv weight's zeros and record their pattern.

    %fc.weight = param f32[64,32]        (90 % of its 16x1 blocks all zero)
      -> %fc.weight = param f32[64,32]  # sparsity 16x1 density=0.1

For every ``get_attr`` weight of an ``aten.linear`` / ``aten.conv*`` whose
element density d (fraction nonzero) is at most ``max-density``, records a
`Sparsity` annotation, choosing in this order:

1. the largest block of ``blocks`` (by area, larger than one element) that
   divides the weight and whose block density is <= d * (1 + ``tolerance``):
   the zeros really come in such blocks;
2. the first N:M of ``nm`` that holds exactly (every group of M consecutive
   input weights holds at most N nonzeros) with N/M <= d * (1 + ``tolerance``);
3. ``unstructured`` when ``1x1`` is in ``blocks``.

A weight denser than ``max-density`` (or matching nothing) gets no annotation,
and a stale one is removed. The TVM backend reads these annotations.

Requires: nothing. Establishes: ``sparsity-annotated``. Numerics: exact (the
graph and its weights are unchanged; only annotations are written). Bad input:
bad block or N:M text, a tolerance < 0, a max-density outside (0, 1]
(`SparsityError`). Leaves alone: dense weights, computed (non-``get_attr``)
weights, biases. Sits after ``sparsify`` / ``fine-tune`` (or on a model whose
weights were pruned elsewhere), before compiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.pattern import (
    SparsityError,
    block_density,
    element_density,
    nm_holds,
    parse_pattern,
    weight_sites,
)


@dataclass(frozen=True)
class AnnotateSparsity(Pass):
    """Record the measured sparsity pattern of every sparse weight (see the module docstring)."""

    name = "annotate-sparsity"
    establishes = frozenset({Property.SPARSITY_ANNOTATED})

    blocks: tuple[str, ...] = ("16x1", "8x1", "4x1", "1x1")
    nm: tuple[str, ...] = ("2:4", "4:8", "1:4")
    tolerance: float = 0.05
    max_density: float = 0.5

    def __post_init__(self) -> None:
        for text in self.blocks:
            if parse_pattern(text).is_nm:
                raise SparsityError(f"blocks takes RxC blocks (16x1), got the N:M pattern {text!r}; put it in nm")
        for text in self.nm:
            if not parse_pattern(text).is_nm:
                raise SparsityError(f"nm takes N:M patterns (2:4), got {text!r}; put blocks in blocks")
        if not self.tolerance >= 0:
            raise SparsityError(f"tolerance must be >= 0 (0.05: 5 % slack), got {self.tolerance}")
        if not 0 < self.max_density <= 1:
            raise SparsityError(f"max-density must be in (0, 1], got {self.max_density}")

    def describe(self, weight: torch.Tensor) -> Sparsity | None:
        """The annotation `weight` gets, or None when it is dense or matches nothing."""
        d = element_density(weight)
        if d > self.max_density:
            return None
        limit = d * (1 + self.tolerance)
        blocks = sorted((parse_pattern(b) for b in self.blocks), key=lambda p: -p.block[0] * p.block[1])
        for p in blocks:
            bd = block_density(weight, p.block)
            if p.block != (1, 1) and bd is not None and bd <= limit:
                return Sparsity.of(weight, p, bd)
        for p in map(parse_pattern, self.nm):
            if p.nm_density <= limit and nm_holds(weight, p):
                return Sparsity.of(weight, p, d)
        unstructured = any(parse_pattern(b).block == (1, 1) for b in self.blocks)
        return Sparsity.of(weight, parse_pattern("unstructured"), d) if unstructured else None

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        modified, found = False, {}
        for site in weight_sites(graph):
            note = self.describe(graph.param(site.node))
            old = notes.get(site.node, Sparsity.key)
            if note is None and old is not None:
                del notes.annotations(site.node)[Sparsity.key]
                modified = True
            elif note is not None and note != old:
                notes.annotate(site.node, note)
                modified = True
            if note is not None:
                found[site.layer] = note.pattern
        return PassResult(graph, modified=modified, stats={"annotated": found})
