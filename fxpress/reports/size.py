"""Weight size accounting: bytes as dense fp32, as the artifact stores them, and an entropy-coded estimate.

    weight_sizes(graph).text()
      tensor       shape       form      dense fp32   stored   entropy-coded
      fc1.weight   [300, 784]  codebook  940.8 KiB    14.2 KiB   9.6 KiB
      ...
      total                              1.02 MiB     27.6 KiB  17.0 KiB   (x37.9 stored, x61.6 entropy-coded)

Three numbers per weight tensor:

- **dense fp32**: its elements times 4 bytes, what an uncompressed float
  model holds (a hashed layer counts its virtual weights);
- **stored**: the bytes the artifact writes for it, by the same code the
  artifact uses (`fxpress.runtime.storage.encode_params`: int8 packed to 4/2
  bits, at most 256 distinct values as packed indices plus a codebook, hashed
  weights as their buckets, everything else as it is);
- **entropy-coded**: Deep Compression's last stage (Han et al. 2016, sec. 4),
  estimated, not written: the codebook indices Huffman-coded, and, for a
  sparse weight, its nonzeros in their relative-index form (each entry stores
  the gap to the previous nonzero in ``p`` bits, a filler zero entry bridging
  a gap longer than ``2**p``), gaps and indices Huffman-coded separately, ``p``
  from 1 to 8 whichever is smallest; the smaller of the dense and the sparse
  form is taken, plus the codebook itself. Exact Huffman code lengths
  (`huffman_bits`), not Shannon's bound. A tensor with more than 256
  distinct values is not entropy-coded (its estimate is its stored size).

`weight_sizes` reads a graph (before compiling, so shapes are the model's own);
`artifact_sizes` reads an artifact's decoded weights (after the compile-time
layout transform: padding may add elements).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.runtime import codebook, storage
from fxpress.sharing.annotations import SharedWeights

MAX_GAP_BITS = 8


def huffman_bits(counts: Iterable[int]) -> int:
    """Total bits of a Huffman code for symbols occurring `counts` times (one symbol: 1 bit each)."""
    weights = [int(c) for c in counts if c > 0]
    if len(weights) <= 1:
        return sum(weights)
    heapq.heapify(weights)
    total = 0
    while len(weights) > 1:
        merged = heapq.heappop(weights) + heapq.heappop(weights)
        total += merged  # every symbol under a merge gets one bit longer
        heapq.heappush(weights, merged)
    return total


def _sparse_bits(indices: np.ndarray, zero: int) -> int:
    """Huffman bits of the relative-index form of a flat index stream whose zero symbol is `zero`, best gap width."""
    positions = np.flatnonzero(indices != zero)
    values = indices[positions]
    gaps = np.diff(positions, prepend=-1)
    best = None
    for p in range(1, MAX_GAP_BITS + 1):
        span = 2**p
        fillers = (gaps - 1) // span  # entries of value `zero` bridging each long gap
        last = gaps - fillers * span  # the real entry's own gap, in [1, span]
        gap_counts = np.bincount(last - 1, minlength=span)
        gap_counts[span - 1] += int(fillers.sum())  # a filler stores the full span
        value_counts = np.bincount(values, minlength=zero + 1)
        value_counts[zero] += int(fillers.sum())
        bits = huffman_bits(gap_counts) + huffman_bits(value_counts)
        best = bits if best is None else min(best, bits)
    return int(best or 0)


def entropy_bytes(array: np.ndarray) -> int | None:
    """Deep Compression's entropy-coded size of `array` (see the module doc), or None when it has > 256 values."""
    found = codebook.codebook_of(array) if array.size >= 2 else None
    if found is None:
        return None
    table, indices = found
    flat = indices.reshape(-1).astype(np.int64)
    dense = huffman_bits(np.bincount(flat))
    zero_at = np.flatnonzero(table.view(np.uint8 if table.itemsize == 1 else f"u{table.itemsize}") == 0)
    bits = dense if zero_at.size == 0 else min(dense, _sparse_bits(flat, int(zero_at[0])))
    return -(-bits // 8) + table.nbytes


@dataclass(frozen=True)
class TensorSize:
    """One weight tensor's sizes (see the module doc)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    form: str  # dense, packed, codebook or hashed
    dense_fp32_bytes: int
    stored_bytes: int
    entropy_bytes: int


@dataclass(frozen=True)
class SizeReport:
    """Every weight tensor's sizes and the totals."""

    tensors: tuple[TensorSize, ...]

    @property
    def dense_fp32_bytes(self) -> int:
        return sum(t.dense_fp32_bytes for t in self.tensors)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors)

    @property
    def entropy_bytes(self) -> int:
        return sum(t.entropy_bytes for t in self.tensors)

    def ratios(self) -> dict[str, float]:
        """Dense fp32 bytes over stored and over entropy-coded bytes."""
        return {
            "stored": self.dense_fp32_bytes / max(self.stored_bytes, 1),
            "entropy_coded": self.dense_fp32_bytes / max(self.entropy_bytes, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": [{**asdict(t), "shape": list(t.shape)} for t in self.tensors],
            "dense_fp32_bytes": self.dense_fp32_bytes,
            "stored_bytes": self.stored_bytes,
            "entropy_bytes": self.entropy_bytes,
            "ratios": {k: round(v, 2) for k, v in self.ratios().items()},
        }

    def text(self, limit: int = 20) -> str:
        """A table, the largest `limit` tensors by dense size, and the totals."""
        rows = [("tensor", "shape", "form", "dense fp32", "stored", "entropy-coded")]
        for t in sorted(self.tensors, key=lambda t: -t.dense_fp32_bytes)[:limit]:
            size = (human_bytes(t.dense_fp32_bytes), human_bytes(t.stored_bytes), human_bytes(t.entropy_bytes))
            rows.append((t.name, str(list(t.shape)), t.form, *size))
        if len(self.tensors) > limit:
            rows.append((f"({len(self.tensors) - limit} more)", "", "", "", "", ""))
        r = self.ratios()
        total = (human_bytes(self.dense_fp32_bytes), human_bytes(self.stored_bytes), human_bytes(self.entropy_bytes))
        rows.append(("total", "", "", *total))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines[-1] += f"   (x{r['stored']:.1f} stored, x{r['entropy_coded']:.1f} entropy-coded)"
        return "\n".join(lines)


def human_bytes(n: int) -> str:
    """`n` bytes as B / KiB / MiB with three significant digits."""
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.2f} MiB"


def _sizes(arrays: dict[str, np.ndarray], hashed: dict[str, dict[str, Any]]) -> SizeReport:
    out = []
    for name, array in arrays.items():
        stored, tables = storage.encode_params({name: array}, {name: hashed[name]} if name in hashed else None)
        form = next(iter(tables), "dense")
        stored_bytes = codebook.stored_bytes(stored)
        coded = entropy_bytes(array) if form != "hashed" else None
        out.append(
            TensorSize(
                name,
                tuple(int(d) for d in array.shape),
                str(array.dtype),
                form,
                int(array.size) * 4,
                stored_bytes,
                min(coded, stored_bytes) if coded is not None else stored_bytes,
            )
        )
    return SizeReport(tuple(out))


def weight_sizes(graph: Graph) -> SizeReport:
    """The sizes of every tensor `graph` holds (parameters and buffers), by ``get_attr`` name."""
    arrays, hashed = {}, {}
    for node in graph.nodes("get_attr"):
        value = graph.param(node)
        if not hasattr(value, "detach"):
            continue
        arrays[str(node.target)] = value.detach().cpu().contiguous().numpy()
        note = notes.get(node, SharedWeights.key)
        if isinstance(note, SharedWeights) and note.method == "hash":
            hashed[str(node.target)] = {"buckets": note.clusters, "seed": note.seed}
    return _sizes(arrays, hashed)


def artifact_sizes(directory: str | Path) -> SizeReport:
    """The sizes of an artifact's weights (decoded, checked by hash), as the compiled module reads them."""
    from safetensors.numpy import load_file

    from fxpress.runtime.artifact import WEIGHTS, read_manifest

    manifest = read_manifest(directory)
    arrays = storage.decode_params(load_file(str(Path(directory) / WEIGHTS)), manifest)
    hashed = manifest.get("hashed_params", {}) if manifest.get("weights_stage") == "raw" else {}
    return _sizes(arrays, hashed)
