"""How an artifact's parameters are written and read back: packed, codebook-indexed, hashed or dense.

    encode_params({"p0_w": int8 [64, 512] in [-8, 7], "p1_w": f32 [300, 784], 64 values, ...})
      -> arrays for weights.safetensors, {"packed": {...}, "codebook": {...}}
    decode_params(those arrays, manifest tables) -> the original arrays, bit for bit

Each parameter takes the smallest lossless form that applies: int8 values
that fit 4 or 2 signed bits are packed (packing.py); at most 256 distinct
values become packed indices plus a codebook (codebook.py); a HashedNets
weight (named in `hashed` with its bucket count and seed) becomes its bucket
vector; everything else is written as it is. `storage_summary` gives the
manifest's ``storage`` entry: how the backend gets dense weights back
("decoded at load": the compiled kernels read ordinary dense weights, there
is no lookup kernel), how many parameters take each form, and the bytes
dense versus as stored. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fxpress.runtime import codebook, packing
from fxpress.runtime.hashing import expand

TABLES = ("packed", "codebook", "hashed")


def encode_params(
    arrays: dict[str, np.ndarray], hashed: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """(the arrays to write, the manifest's tables by name; empty tables left out). See the module doc.

    `hashed` maps a parameter name to ``{"buckets": B, "seed": s}``; a weight that no longer follows its
    hash raises ValueError naming it.
    """
    hashed = hashed or {}
    out: dict[str, np.ndarray] = {}
    tables: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
    for name, array in arrays.items():
        if name in hashed:
            spec = hashed[name]
            try:
                out[name] = codebook.buckets_of(array, int(spec["buckets"]), int(spec["seed"]))
            except ValueError as exc:
                raise ValueError(f"hashed parameter {name!r}: {exc}") from exc
            tables["hashed"][name] = {
                "buckets": int(spec["buckets"]),
                "seed": int(spec["seed"]),
                "dtype": str(array.dtype),
                "shape": list(array.shape),
            }
            continue
        bits = packing.narrowest_bits(array)
        coded = codebook.encode(name, array)
        if coded is not None:
            stored, tables["codebook"][name] = coded
            out.update(stored)
        elif bits is not None:
            out[name] = packing.pack(array, bits)
            tables["packed"][name] = {"bits": bits, "dtype": "int8", "shape": list(array.shape)}
        else:
            out[name] = array
    return out, {t: v for t, v in tables.items() if v}


def decode_params(arrays: dict[str, np.ndarray], tables: dict[str, Any]) -> dict[str, np.ndarray]:
    """The dense parameters that `encode_params` wrote as `arrays` with `tables`; ValueError on a broken entry."""
    out = packing.unpack_params(arrays, tables.get("packed", {}))
    for name, entry in tables.get("codebook", {}).items():
        if not isinstance(entry, dict):
            raise ValueError(f"codebook parameter {name!r} has an unknown entry {entry!r}")
        out[name] = codebook.decode(out, name, entry)
        out.pop(name + codebook.SUFFIX, None)
    for name, entry in tables.get("hashed", {}).items():
        values = out.get(name)
        if values is None or not isinstance(entry, dict):
            raise ValueError(f"hashed parameter {name!r} is missing from the weights or has an unknown entry")
        if values.ndim != 1 or values.size != int(entry["buckets"]) or str(values.dtype) != entry["dtype"]:
            raise ValueError(f"hashed parameter {name!r}: buckets {values.dtype}{list(values.shape)} != {entry}")
        out[name] = expand(values, [int(d) for d in entry["shape"]], int(entry["seed"]))
    return out


def storage_summary(
    dense: dict[str, np.ndarray], stored: dict[str, np.ndarray], tables: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's ``storage`` entry: decode point, parameters per form, bytes dense and as stored."""
    return {
        "decode": "at load (the kernels read dense weights)",
        "forms": {t: len(tables.get(t, {})) for t in TABLES},
        "dense_bytes": int(sum(a.nbytes for a in dense.values())),
        "stored_bytes": codebook.stored_bytes(stored),
    }
