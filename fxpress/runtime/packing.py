"""Sub-8-bit weights on disk: int8 tensors whose values fit 4 or 2 bits, stored packed and widened on load.

    save:  int8 [64, 512] with every value in [-8, 7]  ->  uint8 [16384] (two 4-bit fields a byte)
    load:  uint8 [16384]  ->  int8 [64, 512], the same values

Weights quantized to fewer than 8 bits (``observe{weight-bits=4}``, QAT)
still run on the int8 kernels, so the compiled module holds them as int8; the
artifact stores them in as many bits as their values need. `pack` takes an
int8 array whose every value lies in a signed ``bits``-bit range
([-8, 7] for 4, [-2, 1] for 2), writes each as a ``bits``-bit two's-complement
field, element ``i`` of the flattened (C-order) array in the bits
``(i * bits) % 8`` upward of byte ``i * bits // 8``, and pads the last byte
with zeros; `unpack` sign-extends the fields back. Lossless by construction:
`narrowest_bits` only picks a width every value fits, so an 8-bit weight
that happens to span [-8, 7] is packed too, and loads unchanged.

The manifest's ``packed`` table names each packed parameter with its bits,
dtype and shape (format version 2; version 1 artifacts have none). Pure
numpy: the runtime imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WIDTHS = (2, 4)  # the packed widths, narrowest first
MIN_ELEMENTS = 64  # smaller tensors (zero points, shifts) are not worth a table entry


def narrowest_bits(array: np.ndarray) -> int | None:
    """The narrowest width of `WIDTHS` every value of an int8 `array` fits, or None (keep it as it is)."""
    if array.dtype != np.int8 or array.size < MIN_ELEMENTS:
        return None
    lo, hi = int(array.min()), int(array.max())
    for bits in WIDTHS:
        if -(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1:
            return bits
    return None


def pack_fields(fields: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned `bits`-bit fields (any integer array, every value in [0, 2**bits)) as a packed uint8 stream.

    Field ``i`` occupies bits ``i * bits`` upward of the stream, least significant bit first (so for 2 and 4
    bits, element ``i`` sits in the bits ``(i * bits) % 8`` upward of byte ``i * bits // 8``); the last byte
    is padded with zeros. Any width from 1 to 8.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"field widths are 1 to 8 bits, got {bits}")
    flat = fields.reshape(-1).astype(np.uint16)
    if flat.size and int(flat.max()) >= 2**bits:
        raise ValueError(f"a field value {int(flat.max())} does not fit {bits} bits")
    stream = ((flat[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_fields(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The `count` unsigned fields (uint8) that `pack_fields` stored in `packed`."""
    if not 1 <= bits <= 8:
        raise ValueError(f"field widths are 1 to 8 bits, got {bits}")
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != -(-count * bits // 8):
        raise ValueError(f"{packed.dtype}{list(packed.shape)} cannot hold {count} {bits}-bit fields")
    stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits).astype(np.uint8)
    return np.bitwise_or.reduce(stream << np.arange(bits, dtype=np.uint8), axis=1).astype(np.uint8)


def pack(array: np.ndarray, bits: int) -> np.ndarray:
    """`array` (int8, every value in the signed `bits`-bit range) as packed uint8 fields (see the module doc)."""
    if bits not in WIDTHS:
        raise ValueError(f"packed widths are {WIDTHS}, got {bits}")
    flat = array.reshape(-1).astype(np.int16)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if flat.size and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(f"values outside [{lo}, {hi}] do not fit {bits} bits")
    return pack_fields(flat & (2**bits - 1), bits)


def unpack(packed: np.ndarray, bits: int, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """The int8 array of `shape` that `pack` stored in `packed`."""
    if bits not in WIDTHS:
        raise ValueError(f"packed widths are {WIDTHS}, got {bits}")
    count = int(np.prod(shape, dtype=np.int64))
    fields = unpack_fields(packed, bits, count).astype(np.int16)
    signed = np.where(fields >= 2 ** (bits - 1), fields - 2**bits, fields)
    return signed.astype(np.int8).reshape(tuple(shape))


def pack_params(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """(arrays with the narrow int8 ones packed, the manifest's ``packed`` table)."""
    out, table = {}, {}
    for name, array in arrays.items():
        bits = narrowest_bits(array)
        if bits is None:
            out[name] = array
            continue
        out[name] = pack(array, bits)
        table[name] = {"bits": bits, "dtype": "int8", "shape": list(array.shape)}
    return out, table


def unpack_params(arrays: dict[str, np.ndarray], table: dict[str, Any]) -> dict[str, np.ndarray]:
    """`arrays` with every parameter of the ``packed`` table widened back to int8."""
    out = dict(arrays)
    for name, entry in table.items():
        if name not in out:
            raise ValueError(f"packed parameter {name!r} is missing from the weights")
        if not isinstance(entry, dict) or entry.get("dtype") != "int8":
            raise ValueError(f"packed parameter {name!r} has an unknown entry {entry!r}")
        out[name] = unpack(out[name], int(entry["bits"]), list(entry["shape"]))
    return out
