"""`MagnitudeMasks`: which weights a sparsity request covers, and the masks it keeps.

    spec = MagnitudeMasks(density=0.1, pattern="16x1", scope="global", skip=("head",))
    masks = spec.masks(graph)        # parameter path -> boolean mask of the weights kept

The request the ``sparsify`` pass makes, as plain data below the passes, so
that `fxpress.train.fine_tune` can recompute masks at a ramped density without
importing a pass: ``sparsify`` holds the same options and asks this class, and
``fine_tune(sparsify=...)`` takes either (anything with ``magnitude_masks()``).

Options (validated when built, each failure a `SparsityError`):

- ``density``: the fraction kept, in (0, 1] (of blocks for block patterns);
  None means 0.5, or N/M for an N:M pattern (which fixes it);
- ``pattern``: ``unstructured``, ``N:M`` or ``RxC`` blocks (`parse_pattern`);
- ``scope``: ``per-layer`` (each weight keeps ``density`` of its blocks) or
  ``global`` (blocks of all selected weights ranked together);
- ``layers``: a regex one of a weight's names must fully match (None: all);
- ``skip``: regexes of weights to leave dense.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

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

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

SCOPES = ("per-layer", "global")


@dataclass(frozen=True)
class MagnitudeMasks:
    """A magnitude-pruning request: pattern, density, scope and which weights (see the module docstring)."""

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

    def magnitude_masks(self) -> MagnitudeMasks:
        """This request (what `MaskSource` asks for)."""
        return self

    @property
    def target_density(self) -> float:
        """The density kept: N/M for an N:M pattern, else `density` (0.5 when unset)."""
        pattern = parse_pattern(self.pattern)
        return pattern.nm_density if pattern.is_nm else (0.5 if self.density is None else float(self.density))

    def sites(self, graph: Graph) -> list[WeightSite]:
        """The weights this request covers (checked: the pattern divides each one)."""
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


class MaskSource(Protocol):
    """Anything that states a magnitude-pruning request: `MagnitudeMasks` itself, or the ``sparsify`` pass."""

    def magnitude_masks(self) -> MagnitudeMasks: ...
