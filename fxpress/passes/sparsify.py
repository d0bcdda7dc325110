"""sparsify: magnitude pruning of linear and conv weights to a target density, in a pattern.

    %fc.weight = param f32[64,32]
      -> %fc.weight = param f32[64,32]  # sparsity 16x1 density=0.25     (density=0.25, pattern=16x1)

Zeroes the smallest weights of every selected ``aten.linear`` / ``aten.conv*``
weight (a ``get_attr`` parameter) and records a `Sparsity` annotation with the
measured density on it. Options:

- ``density``: the fraction kept, in (0, 1] (of blocks for block patterns);
  unset, it is 0.5, or N/M for an N:M pattern (which fixes it);
- ``pattern``: ``unstructured`` (default), ``N:M`` (``2:4``: the N largest of
  every M consecutive input weights) or ``RxC`` blocks (``16x1``: R output rows
  x C input columns, ranked by L2 norm; a conv weight is ``[O, I*kh*kw]``);
- ``scope``: ``per-layer`` (each weight keeps ``density`` of its blocks) or
  ``global`` (blocks of all selected weights ranked together);
- ``layers``: a regex; only weights one of whose names (op node, parameter
  path, module path) fully matches it (default: every linear and conv weight);
- ``skip``: regexes of weights to leave dense (e.g. the classifier).

Parameters are replaced by new frozen parameters under the same name.

Requires: nothing. Establishes: ``sparsified``; invalidates ``calibrated``.
Numerics: the graph computes what the original computes with the zeroed weights
set to zero in eager PyTorch (bit-exact: only weights change). Bad input, each a
`SparsityError`: bad pattern text, N > M, a density outside (0, 1] or not N/M
for an N:M pattern, a block that does not divide a weight (naming the layer,
its shape and the block), a ``layers`` regex that matches no weight.
Leaves alone: weights that are not ``get_attr`` parameters (computed weights),
skipped layers, biases, and a graph already sparsified at this density and
pattern (a second run changes nothing). Sits after ``fold-bn`` and
``prune-channels``; before ``annotate-sparsity``, ``fine-tune`` and quantization.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.pattern import (
    SparsityError,
    WeightSite,
    check_density,
    check_divides,
    global_masks,
    magnitude_mask,
    parse_pattern,
    select,
    weight_sites,
)

SCOPES = ("per-layer", "global")


def replace_param(graph: Graph, node: torch.fx.Node, value: torch.Tensor) -> None:
    """Store `value` as the (frozen) parameter `node` reads, under the same attribute name."""
    owner, _, leaf = str(node.target).rpartition(".")
    module = graph.gm.get_submodule(owner) if owner else graph.gm
    if leaf in module._buffers:
        module.register_buffer(leaf, value.detach().clone().contiguous())
        return
    delattr(module, leaf)
    module.register_parameter(leaf, nn.Parameter(value.detach().clone().contiguous(), requires_grad=False))


@dataclass(frozen=True)
class Sparsify(Pass):
    """Zero the smallest weights (or blocks) of linear and conv layers (see the module docstring)."""

    name = "sparsify"
    establishes = frozenset({"sparsified"})
    invalidates = frozenset({"calibrated"})

    density: float | None = None
    pattern: str = "unstructured"
    scope: str = "per-layer"
    layers: str | None = None
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        pattern = parse_pattern(self.pattern)
        if self.density is not None:
            check_density(self.density)
        if pattern.is_nm and self.density is not None and not math.isclose(self.density, pattern.nm_density):
            raise SparsityError(
                f"pattern {pattern.text} keeps {pattern.nm_density:g} of the weights; "
                f"leave density unset or set it to {pattern.nm_density:g} (got {self.density})"
            )
        if self.scope not in SCOPES:
            raise SparsityError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        for regex in (self.layers, *self.skip):
            try:
                re.compile(regex or "")
            except re.error as exc:
                raise SparsityError(f"bad regex {regex!r} in layers/skip: {exc}") from None

    @property
    def target_density(self) -> float:
        pattern = parse_pattern(self.pattern)
        return pattern.nm_density if pattern.is_nm else (0.5 if self.density is None else float(self.density))

    def sites(self, graph: Graph) -> list[WeightSite]:
        """The weights this pass sparsifies (checked: the pattern divides each one)."""
        everything = weight_sites(graph)
        sites = select(everything, self.layers, self.skip)
        if self.layers is not None and not sites:
            names = ", ".join(s.layer for s in everything) or "(none)"
            raise SparsityError(f"layers {self.layers!r} matches no linear or conv weight; the layers are: {names}")
        pattern = parse_pattern(self.pattern)
        for s in sites:
            check_divides(graph.param(s.node).shape, pattern, s.layer)
        return sites

    def masks(self, graph: Graph, sites: list[WeightSite] | None = None) -> dict[str, torch.Tensor]:
        """Parameter path -> boolean mask of the weights kept (of `sites`, default `self.sites(graph)`)."""
        pattern, density = parse_pattern(self.pattern), self.target_density
        sites = self.sites(graph) if sites is None else sites
        if self.scope == "global":
            return global_masks({str(s.node.target): graph.param(s.node) for s in sites}, pattern, density)
        return {str(s.node.target): magnitude_mask(graph.param(s.node), pattern, density, s.layer) for s in sites}

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        pattern = parse_pattern(self.pattern)
        sites = self.sites(graph)
        masks = self.masks(graph, sites)
        nodes = {str(s.node.target): s.node for s in sites}
        modified, kept, total = False, 0, 0
        for target, mask in masks.items():
            node, weight = nodes[target], graph.param(target)
            new = torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype))
            if not torch.equal(new, weight):
                replace_param(graph, node, new)
                modified = True
            note = Sparsity.of(new, pattern)
            if notes.get(node, Sparsity.key) != note:
                notes.annotate(node, note)
                modified = True
            kept, total = kept + int((new != 0).sum()), total + new.numel()
        stats = {"weights": len(masks), "density": round(kept / total, 6) if total else 1.0}
        return PassResult(graph, modified=modified, stats=stats)
