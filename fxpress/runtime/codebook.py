"""Weights with few distinct values on disk: packed indices plus a codebook, decoded on load; hashed weights as buckets.

    save:  float32 [300, 784] holding 64 distinct values  ->  uint8 [176400] (6-bit indices) + float32 [64]
    load:  indices + codebook  ->  float32 [300, 784], bit for bit the same

Weight sharing (k-means codebooks, ``share-weights``) leaves a layer with at
most ``2**bits`` distinct values, logarithmic quantization an int8 weight
with at most 15 ({0, +-2**k}); the compiled kernels still read the dense
weight (the backend decodes at load time, no lookup kernel), so the
artifact stores such a parameter as its index stream (`packing.pack_fields`,
``ceil(log2(entries))`` bits each) plus the table of distinct values. The
values are found by their bit patterns (``-0.0`` and ``0.0`` stay apart), so
decoding is lossless whatever produced them: the save needs no hint from
the graph, and a compile-time layout transform (panel packing, transposes,
zero padding) keeps a weight's codebook small. A parameter is stored this way
only when that takes fewer bytes than it does now (int8 weights whose values
fit 4 or 2 bits keep the ``packed`` form of packing.py when that is as small).

A HashedNets layer has up to ``buckets`` distinct values, too many to index
cheaply; its bucket vector alone is stored (the ``hashed`` table: buckets,
seed, shape) and the weight rebuilt with `fxpress.runtime.hashing.expand`.
Such weights are stored before the compile-time transform (see save.py).

The manifest's ``codebook`` table names each parameter stored this way with
its index bits, entries, dtype and shape (format version 3). Pure numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fxpress.runtime.hashing import hash_buckets
from fxpress.runtime.packing import MIN_ELEMENTS, narrowest_bits, pack_fields, unpack_fields

MAX_ENTRIES = 256  # 8-bit indices at most
SUFFIX = "::codebook"  # the safetensors key of a parameter's codebook
_SAMPLE = 4096  # distinct values in the first elements, checked before a full np.unique


def index_bits(entries: int) -> int:
    """The index width that addresses `entries` codebook entries (at least 1 bit)."""
    return max(1, math.ceil(math.log2(max(entries, 1))))


def _bit_view(array: np.ndarray) -> np.ndarray | None:
    kinds = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
    if array.dtype.kind not in "fiu" or array.dtype.itemsize not in kinds:
        return None
    return np.ascontiguousarray(array).reshape(-1).view(kinds[array.dtype.itemsize])


def codebook_of(array: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(codebook of `array`'s distinct values, each element's index) when there are at most 256, else None."""
    bits = _bit_view(array)
    if bits is None or array.size < MIN_ELEMENTS:
        return None
    if np.unique(bits[:_SAMPLE]).size > MAX_ENTRIES:
        return None
    patterns, inverse = np.unique(bits, return_inverse=True)
    if patterns.size > MAX_ENTRIES:
        return None
    return patterns.view(array.dtype), inverse.astype(np.uint8)


def codebook_bytes(size: int, entries: int, itemsize: int) -> int:
    """Bytes of `size` indices into `entries` entries of `itemsize` bytes, as stored."""
    return -(-size * index_bits(entries) // 8) + entries * itemsize


def encode(name: str, array: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(the arrays that store `array` under `name`, its ``codebook`` table entry), or None when that is not smaller."""
    found = codebook_of(array)
    if found is None:
        return None
    codebook, indices = found
    bits = index_bits(codebook.size)
    packed = narrowest_bits(array)
    if packed is not None and packed <= bits:
        return None  # packing.py's signed fields are as small
    if codebook_bytes(array.size, codebook.size, array.dtype.itemsize) >= array.nbytes:
        return None
    entry = {"bits": bits, "entries": int(codebook.size), "dtype": str(array.dtype), "shape": list(array.shape)}
    return {name: pack_fields(indices, bits), name + SUFFIX: codebook}, entry


def decode(arrays: dict[str, np.ndarray], name: str, entry: dict[str, Any]) -> np.ndarray:
    """The array that `encode` stored under `name` (its table `entry`)."""
    if name not in arrays or name + SUFFIX not in arrays:
        raise ValueError(f"codebook parameter {name!r} lacks its indices or its codebook in the weights")
    codebook = arrays[name + SUFFIX]
    shape = tuple(int(d) for d in entry["shape"])
    if codebook.ndim != 1 or codebook.size != int(entry["entries"]) or str(codebook.dtype) != entry["dtype"]:
        raise ValueError(f"codebook parameter {name!r}: codebook {codebook.dtype}{list(codebook.shape)} != {entry}")
    if int(entry["bits"]) != index_bits(codebook.size):
        raise ValueError(f"codebook parameter {name!r}: {entry['bits']} index bits for {codebook.size} entries")
    indices = unpack_fields(arrays[name], int(entry["bits"]), int(np.prod(shape, dtype=np.int64)))
    if indices.size and int(indices.max()) >= codebook.size:
        raise ValueError(f"codebook parameter {name!r}: an index points past its {codebook.size} entries")
    return codebook[indices].reshape(shape)


def buckets_of(weight: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """The bucket vector a hashed `weight` was expanded from; ValueError when `weight` does not follow its hash."""
    index, sign = hash_buckets(weight.shape, buckets, seed)
    values = np.zeros(buckets, dtype=weight.dtype)
    values[index.reshape(-1)] = (weight * sign.astype(weight.dtype)).reshape(-1)
    if not np.array_equal(values[index] * sign.astype(weight.dtype), weight):
        raise ValueError(f"a weight {list(weight.shape)} does not follow its hash ({buckets} buckets, seed {seed})")
    return values


def stored_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of every array as written (indices, codebooks, buckets and dense arrays alike)."""
    return int(sum(a.nbytes for a in arrays.values()))
