"""Deep Compression's weight sharing by k-means, one weight at a time, and HashedNets' projection.

    new, note = share_kmeans(weight, clusters=64, zeros=True, layer="fc1")   # <= 64 distinct nonzero values
    new, note = share_hash(weight, buckets=3675, seed=7, layer="fc1")        # weight == sign * b[index]

**k-means** (Han et al., "Deep Compression", 2016, section 3): the weights of
one layer (with ``zeros=True`` only its surviving, nonzero weights: the pruned
zeros stay exactly zero and are not a centroid) are clustered into `clusters`
centroids by Lloyd's algorithm from a *linear* initialization, centroids
spaced evenly over ``[min, max]`` of the weights (the paper found it best: it
keeps the few large weights, which matter most, their own centroids); each
weight then takes its centroid's value. In one dimension the clusters are
contiguous runs of the sorted weights, so after one sort an iteration is a
`searchsorted` of the ``k - 1`` midpoints and prefix sums (float64): O(k log n)
a step, a few milliseconds for a 266k-weight layer. It stops when no boundary
moves (at most `MAX_ITERATIONS`); a centroid left empty keeps its place. A
weight that already has at most `clusters` distinct values is its own optimum
(error 0) and is returned unchanged, so sharing twice changes nothing.

**hash** (Chen et al., "Compressing Neural Networks with the Hashing Trick",
2015): the weight becomes ``sign * b[index]`` for the fixed hash of
`fxpress.runtime.hashing`, with each bucket the mean of ``sign * w`` over its
members, the least-squares projection of a trained dense weight onto the
hashed ones (an empty bucket is 0). A weight that already obeys the hash is
returned unchanged.

Deterministic: no random initialization, ties go to the lower cluster.
"""

from __future__ import annotations

import torch

from fxpress.sharing.annotations import SharedWeights, SharingError, hash_index

MAX_ITERATIONS = 300


def kmeans_1d(values: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids float64 ``[clusters]``, sorted; the cluster of each value, int64) of Lloyd's 1-D k-means.

    Linear initialization over ``[min, max]`` of `values`; see the module docstring.
    """
    x = values.detach().flatten().to(torch.float64)
    if clusters < 1 or x.numel() < clusters:
        raise SharingError(f"k-means needs 1 <= clusters <= {x.numel()} values, got {clusters}")
    xs, order = torch.sort(x)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(xs, 0)])
    centroids = torch.linspace(float(xs[0]), float(xs[-1]), clusters, dtype=torch.float64)
    ends = torch.tensor([x.numel()])
    edges: torch.Tensor | None = None
    for _ in range(MAX_ITERATIONS):
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        new = torch.cat([torch.zeros(1, dtype=torch.long), torch.searchsorted(xs, midpoints, right=True), ends])
        if edges is not None and torch.equal(new, edges):
            break  # no boundary moved: the centroids are the means of their clusters
        edges = new
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centroids = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), centroids)).values
    assert edges is not None
    assignment = torch.empty_like(order)
    assignment[order] = torch.repeat_interleave(torch.arange(clusters), edges[1:] - edges[:-1])
    return centroids, assignment


def share_kmeans(
    weight: torch.Tensor, clusters: int, *, zeros: bool, layer: str, bits: int | None = None
) -> tuple[torch.Tensor, SharedWeights]:
    """`weight` with its (nonzero, when `zeros`) values replaced by their k-means centroids, and its annotation."""
    bits = SharedWeights.bits_for(clusters) if bits is None else bits
    note = SharedWeights("kmeans", clusters, bits, 0, zeros)
    flat = weight.detach().flatten()
    members = flat != 0 if zeros else torch.ones_like(flat, dtype=torch.bool)
    values = flat[members]
    if values.numel() < clusters:
        kind = "surviving (nonzero) weights" if zeros else "weights"
        raise SharingError(
            f"layer {layer}: {clusters} clusters for {values.numel()} {kind}; "
            f"ask for at most {values.numel()} (fewer bits), or skip the layer"
        )
    if torch.unique(values).numel() <= clusters:
        return weight.detach().clone(), note  # every value its own centroid: k-means' optimum, error 0
    centroids, assignment = kmeans_1d(values, clusters)
    new = flat.clone()
    new[members] = centroids.to(weight.dtype)[assignment]
    return new.view_as(weight), note


def share_hash(weight: torch.Tensor, buckets: int, *, seed: int, layer: str) -> tuple[torch.Tensor, SharedWeights]:
    """`weight` projected onto HashedNets' ``sign * b[index]`` (least squares), and its annotation."""
    note = SharedWeights("hash", buckets, 0, seed, False)
    if not 1 <= buckets <= weight.numel():
        raise SharingError(f"layer {layer}: {buckets} buckets for {weight.numel()} weights; use 1 to {weight.numel()}")
    if note.problem(weight) is None:
        return weight.detach().clone(), note  # already hashed this way: its own projection
    index, sign = hash_index(tuple(weight.shape), buckets, seed)
    flat = weight.detach().flatten().to(torch.float64) * sign.flatten().to(torch.float64)
    sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, index.flatten(), flat)
    counts = torch.bincount(index.flatten(), minlength=buckets).clamp(min=1)
    values = (sums / counts).to(weight.dtype)
    return values[index] * sign.to(weight.dtype), note
