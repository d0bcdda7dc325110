"""`SharedWeights`: a weight whose values are shared, by k-means clusters or by a fixed hash.

Stored under key ``shared`` on the weight's ``get_attr`` node by
``share-weights``. The weight itself stays a dense float parameter holding the
shared values, so every pass, trainer and backend that reads weights keeps
working unchanged; the annotation says how few values there really are, so
the trainer can move them together and the artifact can store indices and a
codebook (or the bucket vector) instead of the dense tensor.

- ``method``: ``"kmeans"`` (Deep Compression: ``clusters`` centroids, indices
  of ``bits`` bits) or ``"hash"`` (HashedNets: ``clusters`` buckets; element
  ``i`` is ``sign[i] * buckets[index[i]]`` for
  `fxpress.runtime.hashing.hash_buckets` of the weight's shape and ``seed``);
- ``zeros``: k-means only: the pruned zeros are kept apart (they stay exactly
  zero and are not a centroid; Deep Compression clusters the surviving weights).

The verifier calls ``check`` after every pass, and it reads the weight's
values: k-means: at most ``clusters`` distinct values (nonzero ones, with
``zeros``); hash: the weight equals ``sign * b[index]`` with ``b`` read off the
first member of each bucket. So a later pass that breaks the sharing
(fold-bn rescaling rows, a pass that does not drop the annotation) fails where it
happens, naming the weight.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.fx

from fxpress.errors import PassError
from fxpress.ir import annotations as notes
from fxpress.ir.annotations import Annotation
from fxpress.runtime.hashing import hash_buckets

METHODS = ("kmeans", "hash")

log = logging.getLogger(__name__)


class SharingError(PassError, ValueError):
    """A weight-sharing request cannot be honoured: bad clusters, bits, ratio, method or layer names."""


@functools.lru_cache(maxsize=16)
def hash_index(shape: tuple[int, ...], buckets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket int64, sign int8 in {-1, 1}) of every element of a hashed weight of `shape` (cached; do not modify)."""
    index, sign = hash_buckets(shape, buckets, seed)
    return torch.from_numpy(index), torch.from_numpy(sign)


def first_members(index: torch.Tensor, buckets: int) -> torch.Tensor:
    """The first flat position of each bucket in `index` (``index.numel()`` for an empty bucket)."""
    flat = index.flatten()
    first = torch.full((buckets,), flat.numel(), dtype=torch.long)
    return first.scatter_reduce_(0, flat, torch.arange(flat.numel()), "amin")


@dataclass(frozen=True)
class SharedWeights(Annotation):
    """This weight's values are shared: ``clusters`` k-means centroids or hash buckets (see the module docstring)."""

    key = "shared"
    method: str
    clusters: int
    bits: int = 0
    seed: int = 0
    zeros: bool = False

    def problem(self, weight: torch.Tensor) -> str | None:
        """What about `weight` breaks this sharing, or None when it holds."""
        if self.method not in METHODS:
            return f"unknown sharing method {self.method!r} (one of {', '.join(METHODS)})"
        if self.method == "kmeans":
            if not 1 <= self.bits <= 8 or 2**self.bits < self.clusters or self.clusters < 2:
                return f"{self.clusters} clusters do not fit {self.bits}-bit indices (bits 1-8, clusters >= 2)"
            values = weight[weight != 0] if self.zeros else weight
            distinct = torch.unique(values).numel()
            if distinct > self.clusters:
                kind = "distinct nonzero values" if self.zeros else "distinct values"
                return f"the weight holds {distinct} {kind}, more than its {self.clusters} clusters"
            return None
        if self.clusters < 1 or not 0 <= self.seed < 2**63:
            return f"a hashed weight needs >= 1 bucket and a seed in [0, 2**63), got {self.clusters}, {self.seed}"
        index, sign = hash_index(tuple(weight.shape), self.clusters, self.seed)
        flat, first = weight.flatten(), first_members(index, self.clusters).clamp(max=weight.numel() - 1)
        buckets = flat[first] * sign.flatten()[first].to(weight.dtype)
        expected = buckets[index] * sign.to(weight.dtype)
        if not torch.equal(expected, weight):
            bad = int((expected != weight).sum())
            return f"{bad} of {weight.numel()} weights differ from sign * buckets[hash] ({self.text()})"
        return None

    def check(self, node: torch.fx.Node) -> str | None:
        if node.op != "get_attr":
            return f"shared weights on a {node.op} node; they belong on a weight's get_attr node"
        owner = node.graph.owning_module
        try:
            weight = functools.reduce(getattr, str(node.target).split("."), owner)
        except AttributeError:
            return f"shared weights on {node.target!r}, which names no tensor"
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            return f"shared weights on a value that is not a float tensor ({type(weight).__name__})"
        return self.problem(weight.detach())

    def text(self) -> str:
        if self.method == "hash":
            return f"shared hash buckets={self.clusters} seed={self.seed}"
        zeros = " zeros-apart" if self.zeros else ""
        return f"shared kmeans clusters={self.clusters} bits={self.bits}{zeros}"

    @staticmethod
    def bits_for(clusters: int) -> int:
        """The index bits `clusters` centroids need (at least 1)."""
        return max(1, math.ceil(math.log2(clusters)))


def drop_broken_sharing(node: torch.fx.Node, weight: torch.Tensor) -> bool:
    """Remove `node`'s `SharedWeights` annotation if `weight` no longer follows it; whether it was removed.

    A pass that rewrites a shared weight by its own rule (sparsify zeroing part
    of a hash bucket, prune-channels moving a hashed weight's positions) calls
    it on every weight it changed: the weight stays what that pass made it (a
    dense float parameter, stored dense by the artifact), and the annotation,
    which would have the artifact store buckets that no longer give these
    weights back, goes. k-means sharing survives both (zeros and slices keep
    the values among the centroids), so only the sharing actually broken is
    dropped, with a warning naming the weight.
    """
    note = notes.get(node, SharedWeights.key)
    if not isinstance(note, SharedWeights) or note.problem(weight.detach()) is None:
        return False
    del notes.annotations(node)[SharedWeights.key]
    log.warning("%s: the weight no longer follows its %s sharing; stored dense from here on", node.target, note.method)
    return True
