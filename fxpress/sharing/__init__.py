"""Weight sharing: few distinct values per weight, by k-means clusters or by a fixed hash.

Not passes: ``share-weights`` (``fxpress/passes``) applies these, and the
shared training loop (``fxpress/train/loop.py``) keeps them shared.

- `annotations`: `SharedWeights`, the fact recorded on a weight's ``get_attr``
  node (method, clusters or buckets, index bits, seed, zeros kept apart),
  checked against the weight's values by the verifier; `SharingError`;
- `share`: Deep Compression's per-layer k-means (`kmeans_1d`, linear
  initialization, `share_kmeans`) and HashedNets' least-squares projection
  onto a hashed weight (`share_hash`);
- `ties`: `Tie`, the groups a trainer sums gradients over and projects onto.
"""

from fxpress.sharing.annotations import METHODS, SharedWeights, SharingError, hash_index
from fxpress.sharing.share import MAX_ITERATIONS, kmeans_1d, share_hash, share_kmeans
from fxpress.sharing.ties import Tie

__all__ = [
    "MAX_ITERATIONS",
    "METHODS",
    "SharedWeights",
    "SharingError",
    "Tie",
    "hash_index",
    "kmeans_1d",
    "share_hash",
    "share_kmeans",
]
