"""`Sparsity`: the measured sparsity pattern of one weight, the interface to the backends.

Stored under key ``sparsity`` on the weight's ``get_attr`` node (the parameter
feeding an ``aten.linear`` / ``aten.conv2d``) by ``sparsify`` (the pattern it
made) and ``annotate-sparsity`` (the pattern it measured); ``fold-qdq`` measures
the int8 weight it makes from an annotated float one under the same pattern
(an int8 linear keeps its block-sparse kernel that way). The TVM backend reads
it to lower annotated linears to block-sparse (BSR) kernels.

- ``pattern``: ``"unstructured"``, ``"2:4"`` (N:M) or ``"16x1"`` (R x C blocks);
- ``block``: ``(rows of the out dim, cols of the in dim)``: ``(1, 1)`` for
  unstructured, ``(1, M)`` for N:M; a conv weight ``[O, I, kh, kw]`` is the
  matrix ``[O, I*kh*kw]``;
- ``density``: measured, the fraction of blocks (for N:M and unstructured: of
  elements) holding a nonzero.

The verifier calls ``check`` after every pass: the node is a ``get_attr`` of a
float tensor of rank >= 2 whose matrix dims the block divides, the block agrees
with the pattern, and the density is in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx

from fxpress.ir.annotations import Annotation
from fxpress.sparse.pattern import Pattern, SparsityError, measure, parse_pattern


@dataclass(frozen=True)
class Sparsity(Annotation):
    """This weight's zeros follow `pattern` (block `block`) and `density` of its blocks hold a nonzero."""

    key = "sparsity"
    pattern: str
    block: tuple[int, int]
    density: float

    @classmethod
    def of(cls, weight: torch.Tensor, pattern: Pattern, density: float | None = None) -> Sparsity:
        """`weight` described under `pattern`: the measured density (or `density`), to 6 digits."""
        return cls(pattern.text, pattern.block, round(measure(weight, pattern) if density is None else density, 6))

    def check(self, node: torch.fx.Node) -> str | None:
        val = node.meta.get("val")
        if node.op != "get_attr":
            return f"sparsity on a {node.op} node; it belongs on a weight's get_attr node"
        if (
            not isinstance(val, torch.Tensor)
            or not (val.is_floating_point() or val.dtype == torch.int8)
            or val.dim() < 2
        ):
            return f"sparsity on a value that is not a float or int8 weight of rank >= 2 ({getattr(val, 'shape', val)})"
        try:
            expected = parse_pattern(self.pattern).block
        except SparsityError as exc:
            return str(exc)
        if tuple(self.block) != expected:
            return f"pattern {self.pattern} has block {expected}, but the annotation says {tuple(self.block)}"
        rows, cols = int(val.shape[0]), math.prod(int(d) for d in val.shape[1:])
        if rows % self.block[0] or cols % self.block[1]:
            return f"block {self.block[0]}x{self.block[1]} does not divide the weight [{rows}, {cols}]"
        if not 0.0 <= self.density <= 1.0:
            return f"density {self.density} outside [0, 1]"
        return None

    def text(self) -> str:
        return f"sparsity {self.pattern} density={self.density:.4g}"
