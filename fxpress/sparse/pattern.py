"""Sparsity patterns: parse them, find the weights they apply to, make and measure magnitude masks.

A pattern is one of

- ``unstructured``: any element may be zero (block ``(1, 1)``; ``1x1`` means the same);
- ``N:M`` (``2:4``): of every M consecutive input weights of an output row, at
  most N are nonzero (block ``(1, M)``);
- ``RxC`` (``16x1``): R x C blocks are zero or kept whole; R runs along the
  weight's output dim, C along its input dim.

Every weight is seen as a matrix ``[out, in]``: a linear weight as it is, a
conv weight ``[O, I, kh, kw]`` as ``[O, I*kh*kw]`` (so ``N:M`` groups and
blocks run over consecutive kernel taps and input channels, row-major).

Masks keep the largest blocks by L2 norm (elements by ``|w|``; for ``N:M`` the
N largest of each group of M); ties go to the lower index, so masking a masked
weight again at the same density keeps it as it is. Density is the fraction
kept: of blocks for blocks, of elements otherwise. A block that does not divide
its weight, N > M and a density outside (0, 1] are `SparsityError` s that name
the layer, the shape and the block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx

from fxpress.errors import PassError

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

aten = torch.ops.aten
WEIGHT_OPS = {aten.linear.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}
_HOW = "write 'unstructured', N:M (e.g. 2:4) or RxC blocks (e.g. 16x1)"


class SparsityError(PassError, ValueError):
    """A sparsity request cannot be honoured: bad pattern text, density or a block that does not divide."""


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: its canonical text, block ``(rows, cols)`` and, for N:M, N."""

    text: str
    block: tuple[int, int]
    n: int = 0

    @property
    def is_nm(self) -> bool:
        return self.n > 0

    @property
    def nm_density(self) -> float:
        """The density an N:M pattern fixes (N/M)."""
        return self.n / self.block[1]


def parse_pattern(text: str) -> Pattern:
    """``"unstructured"``, ``"2:4"`` or ``"16x1"`` as a `Pattern`; bad text is a `SparsityError`."""
    raw = str(text).strip().lower()
    if raw in ("unstructured", "1x1"):
        return Pattern("unstructured", (1, 1))
    if m := re.fullmatch(r"(\d+):(\d+)", raw):
        n, mm = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= mm:
            raise SparsityError(f"pattern {text!r}: N:M needs 1 <= N <= M (N kept of every M), got N={n}, M={mm}")
        return Pattern(f"{n}:{mm}", (1, mm), n)
    if m := re.fullmatch(r"(\d+)x(\d+)", raw):
        r, c = int(m.group(1)), int(m.group(2))
        if r < 1 or c < 1:
            raise SparsityError(f"pattern {text!r}: block sizes must be positive; {_HOW}")
        return Pattern("unstructured", (1, 1)) if (r, c) == (1, 1) else Pattern(f"{r}x{c}", (r, c))
    raise SparsityError(f"unknown sparsity pattern {text!r}; {_HOW}")


def check_density(density: float) -> None:
    if not isinstance(density, int | float) or math.isnan(density) or not 0 < density <= 1:
        raise SparsityError(f"density must be in (0, 1] (the fraction of weights kept, e.g. 0.1), got {density!r}")


# -- which weights ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSite:
    """A linear/conv weight: its ``get_attr`` node, the op that uses it, and a name for messages."""

    node: torch.fx.Node
    op: torch.fx.Node

    @property
    def layer(self) -> str:
        """The module path (``classifier.1``), or the op node's name (``linear``) for a top-level weight."""
        return str(self.node.target).rpartition(".")[0] or self.op.name

    def names(self) -> tuple[str, ...]:
        """What `layers` / `skip` regexes match: op node name, parameter path, module path."""
        return (self.op.name, str(self.node.target), self.layer)


def weight_sites(graph: Graph) -> list[WeightSite]:
    """Every float ``get_attr`` weight (rank >= 2) of an ``aten.linear`` / ``aten.conv1d..3d``, once each."""
    sites: dict[str, WeightSite] = {}
    for op in graph.nodes("call_function"):
        if op.target not in WEIGHT_OPS or len(op.args) < 2:
            continue
        w = op.args[1]
        val = w.meta.get("val") if isinstance(w, torch.fx.Node) else None
        if not isinstance(w, torch.fx.Node) or w.op != "get_attr" or not isinstance(val, torch.Tensor):
            continue
        if val.is_floating_point() and val.dim() >= 2:
            sites.setdefault(str(w.target), WeightSite(w, op))
    return list(sites.values())


def select(sites: Sequence[WeightSite], layers: str | None, skip: Sequence[str]) -> list[WeightSite]:
    """The sites some name of which fully matches `layers` (all when None) and none matches `skip`."""

    def hit(regex: str, site: WeightSite) -> bool:
        return any(re.fullmatch(regex, name) for name in site.names())

    return [s for s in sites if (layers is None or hit(layers, s)) and not any(hit(r, s) for r in skip)]


# -- masks --------------------------------------------------------------------------------------


def matrix(weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[out, in]`` (a conv's ``[O, I, kh, kw]`` as ``[O, I*kh*kw]``)."""
    return weight.reshape(weight.shape[0], -1)


def check_divides(shape: Sequence[int], pattern: Pattern, layer: str) -> None:
    rows, cols = int(shape[0]), math.prod(int(d) for d in shape[1:])
    r, c = pattern.block
    if rows % r or cols % c:
        what = f"groups of {c}" if pattern.is_nm else f"block {r}x{c}"
        as_matrix = f" (as a matrix [{rows}, {cols}])" if len(shape) > 2 else ""
        raise SparsityError(
            f"{pattern.text}: {what} does not divide the weight of layer {layer!r}, shape "
            f"{list(int(d) for d in shape)}{as_matrix}; choose a block that divides it or skip the layer "
            f"(skip=[{layer}])"
        )


def block_scores(weight: torch.Tensor, pattern: Pattern, layer: str) -> torch.Tensor:
    """One score per block ``[rows/R, cols/C]`` (L2 norm; ``|w|`` for unstructured and N:M)."""
    check_divides(weight.shape, pattern, layer)
    w = matrix(weight.detach()).double()
    if pattern.is_nm or pattern.block == (1, 1):
        return w.abs()
    r, c = pattern.block
    rows, cols = w.shape
    return w.reshape(rows // r, r, cols // c, c).pow(2).sum((1, 3)).sqrt()


def expand(kept: torch.Tensor, weight: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """A per-block boolean back to a per-element mask of `weight`'s shape."""
    r, c = (1, 1) if pattern.is_nm else pattern.block
    return kept.repeat_interleave(r, 0).repeat_interleave(c, 1).reshape(weight.shape)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean of `scores`' shape marking the k largest (ties: lower index first)."""
    order = torch.argsort(scores.reshape(-1), descending=True, stable=True)
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.reshape(scores.shape)


def kept_count(density: float, total: int) -> int:
    """round(density * total), at least one (a layer never vanishes) and at most all."""
    return min(total, max(1, math.floor(density * total + 0.5)))


def nm_mask(weight: torch.Tensor, pattern: Pattern, layer: str) -> torch.Tensor:
    """Keep the N largest ``|w|`` of every M consecutive input weights of each row."""
    scores = block_scores(weight, pattern, layer)
    m = pattern.block[1]
    groups = scores.reshape(scores.shape[0], -1, m)
    rank = torch.argsort(torch.argsort(groups, dim=-1, descending=True, stable=True), dim=-1, stable=True)
    return (rank < pattern.n).reshape(weight.shape)


def magnitude_mask(weight: torch.Tensor, pattern: Pattern, density: float, layer: str) -> torch.Tensor:
    """The elements of `weight` to keep under `pattern` at `density` (per layer)."""
    if pattern.is_nm:
        return nm_mask(weight, pattern, layer)
    check_density(density)
    scores = block_scores(weight, pattern, layer)
    return expand(_top(scores, kept_count(density, scores.numel())), weight, pattern)


def global_masks(weights: Mapping[str, torch.Tensor], pattern: Pattern, density: float) -> dict[str, torch.Tensor]:
    """Masks that keep the largest blocks of all `weights` ranked together (layer name -> weight)."""
    if pattern.is_nm:
        return {name: nm_mask(w, pattern, name) for name, w in weights.items()}
    check_density(density)
    scores = {name: block_scores(w, pattern, name) for name, w in weights.items()}
    if not scores:
        return {}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = _top(flat, kept_count(density, flat.numel()))
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = expand(keep[start : start + s.numel()].reshape(s.shape), weights[name], pattern)
        start += s.numel()
    return out


# -- measuring ----------------------------------------------------------------------------------


def element_density(weight: torch.Tensor) -> float:
    return float((weight != 0).sum()) / max(weight.numel(), 1)


def block_density(weight: torch.Tensor, block: tuple[int, int]) -> float | None:
    """The fraction of R x C blocks holding a nonzero; None when the block does not divide the weight."""
    w = matrix(weight.detach()) != 0
    (rows, cols), (r, c) = w.shape, block
    if rows % r or cols % c:
        return None
    return float(w.reshape(rows // r, r, cols // c, c).any(3).any(1).float().mean())


def nm_holds(weight: torch.Tensor, pattern: Pattern) -> bool:
    """Every group of M consecutive input weights holds at most N nonzeros."""
    w = matrix(weight.detach()) != 0
    m = pattern.block[1]
    if w.shape[1] % m:
        return False
    return bool((w.reshape(w.shape[0], -1, m).sum(-1) <= pattern.n).all())


def measure(weight: torch.Tensor, pattern: Pattern) -> float:
    """The density the `Sparsity` annotation records: of blocks, or of elements for N:M / unstructured."""
    if pattern.is_nm or pattern.block == (1, 1):
        return element_density(weight)
    d = block_density(weight, pattern.block)
    if d is None:
        raise SparsityError(f"{pattern.text} does not divide a weight of shape {list(weight.shape)}")
    return d
