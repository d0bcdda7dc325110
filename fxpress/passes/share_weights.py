"""share-weights: few distinct values per linear/conv weight, by k-means (Deep Compression) or a hash (HashedNets).

    %fc1.weight = param f32[300,784]  # sparsity unstructured density=0.08
      -> %fc1.weight = param f32[300,784]  # ... shared kmeans clusters=64 bits=6 zeros-apart  (<= 64 values)
    %fc1.weight = param f32[1000,784]
      -> %fc1.weight = param f32[1000,784]  # shared hash buckets=12250 seed=0     (w = sign * b[h(i)])

Replaces each selected weight (a ``get_attr`` parameter of an ``aten.linear`` /
``aten.conv*``) by shared values, in place, and records a `SharedWeights`
annotation on its node; the weight stays a dense float parameter, so the graph
runs as before and the trainers keep the sharing (``fine-tune`` / ``distil`` /
``qat`` sum the members' gradients into their centroid or bucket). Options:

- ``method``: ``kmeans`` (default) or ``hash``;
- ``bits`` (1-8: ``2**bits`` clusters, the stored index width; default 5 when
  ``clusters`` is unset too) or ``clusters`` (>= 2; its index width is
  ``ceil(log2(clusters))``; with ``bits`` too, at most ``2**bits``): k-means only.
  Each weight is clustered on its own (Lloyd, linear initialization over
  ``[min, max]``, `fxpress.sharing.share`);
- ``zeros`` (default true): k-means clusters the nonzero weights only, and the
  pruned zeros stay exactly zero (run ``sparsify`` / ``fine-tune`` first, as
  Deep Compression does); false: zeros are weights like any other;
- ``ratio``: hash only, in (0, 1): buckets stored per virtual weight
  (``0.125`` = 1/8), ``max(1, round(ratio * numel))`` buckets per weight,
  each the mean of ``sign * w`` of its members (least squares);
- ``seed``: hash only: the weights' hashes are seeded ``seed + k`` for the
  k-th linear/conv weight of the graph, so layers draw different hashes;
- ``layers`` (a regex one of a weight's names, op node, parameter path or
  module path, must fully match) and ``skip`` (regexes of weights left alone),
  as sparsify's.

Requires: nothing. Establishes: ``weights-shared``; invalidates ``observed``
and ``calibrated`` (weights change); forbids ``quantized`` and
``fake-quantized`` (run it before quantization). Numerics: the graph computes what the
model computes with the shared weights in eager PyTorch (bit-exact: only
weights change); the error is the weights' k-means (or projection) error,
reported per run as ``stats["rmse"]`` (root mean squared change of the
selected weights). Bad input, each a `SharingError` (a `PipelineError` from
text): an unknown method; bits outside 1-8; clusters < 2, more than
``2**bits`` or more than a layer's (surviving) weights; ``bits``/``clusters``
with ``method=hash`` or ``ratio``/``seed`` with k-means; a ratio outside (0, 1);
a ``layers`` or ``skip`` regex that matches no weight (listing the nearest names).
Leaves alone: biases, weights that are not ``get_attr`` parameters, skipped
layers, and a weight already shared this way (a second run changes nothing:
a weight with at most ``clusters`` distinct values is its own k-means optimum).
Sits after ``sparsify`` / ``fine-tune`` (prune, retrain, then share); before
``fine-tune`` (centroid fine-tuning), ``observe`` and quantization.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.properties import QUANTIZED_WEIGHTS, WEIGHT_DEPENDENT, Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.sharing import METHODS, SharedWeights, SharingError, share_hash, share_kmeans
from fxpress.sparse.pattern import WeightSite, select, weight_sites

DEFAULT_BITS = 5  # Deep Compression's fully connected layers (AlexNet, VGG); 6 for LeNet's
DEFAULT_RATIO = 0.125


@dataclass(frozen=True)
class ShareWeights(Pass):
    """Share the values of linear and conv weights by k-means or a hash (see the module docstring)."""

    name = "share-weights"
    establishes = frozenset({Property.WEIGHTS_SHARED})
    invalidates = WEIGHT_DEPENDENT
    forbids = QUANTIZED_WEIGHTS

    method: str = "kmeans"
    bits: int | None = None
    clusters: int | None = None
    zeros: bool = True
    ratio: float | None = None
    seed: int = 0
    layers: str | None = None
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SharingError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.bits is not None and not 1 <= self.bits <= 8:
            raise SharingError(f"bits must be 1-8 (the index width; 2**bits clusters), got {self.bits}")
        if self.clusters is not None and self.clusters < 2:
            raise SharingError(f"clusters must be >= 2 (one value per weight is not sharing), got {self.clusters}")
        if self.clusters is not None and self.bits is not None and self.clusters > 2**self.bits:
            raise SharingError(f"{self.clusters} clusters need more than {self.bits} bits; raise bits or drop it")
        if self.clusters is not None and self.clusters > 256:
            raise SharingError(f"clusters must be at most 256 (8-bit indices), got {self.clusters}")
        if self.method == "hash" and (self.bits is not None or self.clusters is not None):
            raise SharingError("bits and clusters are k-means options; a hash takes ratio (buckets per weight)")
        if self.method == "kmeans" and (self.ratio is not None or self.seed != 0):
            raise SharingError("ratio and seed are hash options; k-means takes bits or clusters")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise SharingError(f"ratio must be in (0, 1) (stored buckets per weight, e.g. 0.125), got {self.ratio}")
        if not 0 <= self.seed < 2**62:
            raise SharingError(f"seed must be in [0, 2**62), got {self.seed}")
        for regex in (self.layers, *self.skip):
            try:
                re.compile(regex or "")
            except re.error as exc:
                raise SharingError(f"bad regex {regex!r} in layers/skip: {exc}") from None

    @property
    def target_clusters(self) -> int:
        """The k-means clusters asked for: ``clusters``, else ``2**bits`` (``bits`` defaulting to 5)."""
        return self.clusters if self.clusters is not None else 2 ** (self.bits or DEFAULT_BITS)

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        everything = weight_sites(graph)
        chosen = {s.node for s in _selected(everything, self.layers, self.skip)}
        modified, changed, total = False, 0.0, 0
        for k, site in enumerate(everything):
            if site.node not in chosen:
                continue
            weight = graph.param(site.node)
            new, note = self._share(weight, k, site.layer)
            if not torch.equal(new, weight):
                changed += float(((new.double() - weight.double()) ** 2).sum())
                graph.replace_param(site.node, new)
                modified = True
            if notes.get(site.node, SharedWeights.key) != note:
                notes.annotate(site.node, note)
                modified = True
            total += weight.numel()
        stats = {"weights": len(chosen), "rmse": round((changed / total) ** 0.5, 8) if total else 0.0}
        return PassResult(graph, modified=modified, stats=stats)

    def _share(self, weight: torch.Tensor, k: int, layer: str) -> tuple[torch.Tensor, SharedWeights]:
        if self.method == "hash":
            buckets = max(1, round((self.ratio or DEFAULT_RATIO) * weight.numel()))
            return share_hash(weight, buckets, seed=self.seed + k, layer=layer)
        return share_kmeans(weight, self.target_clusters, zeros=self.zeros, layer=layer, bits=self.bits)


def _selected(sites: list[WeightSite], layers: str | None, skip: tuple[str, ...]) -> list[WeightSite]:
    """`select`'s sites, refusing a ``layers`` or ``skip`` regex that matches no weight (naming the near ones)."""
    for option, regex in [("layers", layers)] * (layers is not None) + [("skip", r) for r in skip]:
        if not select(sites, regex, ()):
            names = sorted({n for s in sites for n in s.names()})
            near = difflib.get_close_matches(str(regex), names, n=3, cutoff=0.4)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            raise SharingError(
                f"{option} {regex!r} matches no linear or conv weight{hint} "
                f"(the layers are: {', '.join(s.layer for s in sites) or '(none)'})"
            )
    return select(sites, layers, skip)
