"""HashedNets' fixed hash: which bucket, and which sign, each virtual weight of a layer reads.

    hash_buckets((300, 784), buckets=3675, seed=7)
      -> (int64 [300, 784] in [0, 3675), int8 [300, 784] in {-1, +1})

A hashed layer (Chen et al., "Compressing Neural Networks with the Hashing
Trick", 2015) stores only a bucket vector ``b`` of ``buckets`` floats; its
weight is ``W[i] = sign[i] * b[index[i]]`` for every flat (C-order) position
``i``, with ``index`` and ``sign`` drawn from one fixed hash of ``(seed, i)``.
The compiler, the trainer (which sums the members' gradients into their
bucket) and the artifact loader (which rebuilds the weight from the buckets)
all call this one function, so a weight rebuilt at load is the trained one,
bit for bit.

The hash is SplitMix64's finalizer over ``i + seed * golden``: 64-bit
unsigned arithmetic that wraps identically in numpy on every platform. The
bucket is the high 32 bits modulo ``buckets`` (the bias of the modulo is below
``buckets / 2**32``), the sign is bit 0. Pure numpy: the runtime imports no
torch.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_buckets(shape: tuple[int, ...] | list[int], buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket index int64, sign int8 in {-1, 1}) of every element of a weight of `shape` (see the module doc)."""
    if buckets < 1:
        raise ValueError(f"a hashed weight needs at least one bucket, got {buckets}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"the hash seed must be in [0, 2**63), got {seed}")
    count = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        positions = np.arange(count, dtype=np.uint64) + np.uint64(seed) * _GOLDEN
        mixed = _mix(positions)
    index = ((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)
    sign = (1 - 2 * (mixed & np.uint64(1)).astype(np.int8)).astype(np.int8)
    return index.reshape(tuple(shape)), sign.reshape(tuple(shape))


def expand(values: np.ndarray, shape: tuple[int, ...] | list[int], seed: int) -> np.ndarray:
    """The virtual weight of `shape` that the bucket vector `values` stands for (same dtype)."""
    if values.ndim != 1:
        raise ValueError(f"a bucket vector is one-dimensional, got shape {list(values.shape)}")
    index, sign = hash_buckets(shape, int(values.size), seed)
    return (values[index] * sign.astype(values.dtype)).astype(values.dtype)
