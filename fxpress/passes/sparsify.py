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

Parameters are replaced by new frozen parameters under the same name. The
pass is a `fxpress.sparse.MagnitudeMasks` (the same request `fxpress.train.fine_tune`
ramps: its options and the masks they give) that applies them.

Requires: nothing. Establishes: ``sparsified``; invalidates ``observed`` and
``calibrated`` (weights changed: observe and calibrate afterwards); forbids
``quantized`` and ``fake-quantized`` (run it before quantization).
Numerics: the graph computes what the original computes with the zeroed weights
set to zero in eager PyTorch (bit-exact: only weights change). Bad input, each a
`SparsityError`: bad pattern text, N > M, a density outside (0, 1] or not N/M
for an N:M pattern, a block that does not divide a weight (naming the layer,
its shape and the block), a ``layers`` regex that matches no weight.
Leaves alone: weights that are not ``get_attr`` parameters (computed weights),
skipped layers, biases, and a graph already sparsified at this density and
pattern (a second run changes nothing). Shared weights: a sharing the new
zeros break (hash sharing: part of a bucket zeroed) is dropped from that
weight with a warning (``stats["unshared"]``), so the artifact stores it dense,
never buckets that no longer give its values back; one they keep stays. Sits after ``fold-bn`` and
``prune-channels``; before ``annotate-sparsity``, ``fine-tune`` and quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.properties import QUANTIZED_WEIGHTS, WEIGHT_DEPENDENT, Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.sharing.annotations import drop_broken_sharing
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.masks import MagnitudeMasks
from fxpress.sparse.pattern import parse_pattern


@dataclass(frozen=True)
class Sparsify(MagnitudeMasks, Pass):
    """Zero the smallest weights (or blocks) of linear and conv layers (see the module docstring).

    The pass is the `MagnitudeMasks` request it applies: its options (the request's fields, in their
    order), their checks, `target_density`, `sites` and `masks` are the request's.
    """

    name = "sparsify"
    establishes = frozenset({Property.SPARSIFIED})
    invalidates = WEIGHT_DEPENDENT
    forbids = QUANTIZED_WEIGHTS

    def magnitude_masks(self) -> MagnitudeMasks:
        """The request this pass applies, as a plain `MagnitudeMasks` (what `fxpress.train.fine_tune` ramps)."""
        return MagnitudeMasks(self.density, self.pattern, self.scope, self.layers, self.skip)

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        pattern = parse_pattern(self.pattern)
        sites = self.sites(graph)
        masks = self.masks(graph, sites)
        nodes = {str(s.node.target): s.node for s in sites}
        modified, kept, total, unshared = False, 0, 0, 0
        for target, mask in masks.items():
            node, weight = nodes[target], graph.param(target)
            new = torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype))
            if not torch.equal(new, weight):
                graph.replace_param(node, new)
                unshared += drop_broken_sharing(node, new)  # zeros in part of a hash bucket: stored dense
                modified = True
            note = Sparsity.of(new, pattern)
            if notes.get(node, Sparsity.key) != note:
                notes.annotate(node, note)
                modified = True
            kept, total = kept + int((new != 0).sum()), total + new.numel()
        stats = {"weights": len(masks), "density": round(kept / total, 6) if total else 1.0}
        if unshared:
            stats["unshared"] = unshared
        return PassResult(graph, modified=modified, stats=stats)
