"""The packed weight layout the AMX GEMM reads: 32-column panels of 4-byte groups (int8 or bf16).

A weight ``W[N, K]`` (a linear's ``[out, in]``, or a conv's ``[O, I*KH*KW]``
after im2col; the GEMM computes ``C = A @ W.T``) is stored as

    Wp[N/32, K/4, 32, 4]      Wp[p, g, c, q] = W[32p + c, 4g + q]   (0 where 32p + c >= N)

so one panel (32 output columns) is contiguous, and inside it each group of
four consecutive ``k`` is one 128-byte row of 32 dwords. A B tile of
``tdpbusd`` (16 rows of 16 dwords: 4 ``k`` values for each of 16 columns) is
then 16 consecutive rows of a panel, loaded with a 128-byte stride; the
other 16 columns of the panel are the next 64 bytes. ``N`` is padded with
zero columns to a multiple of 32 (the kernel never stores them); ``K`` must
be a multiple of 4 (pad A and W with zero columns otherwise, e.g. in an
im2col prologue).

`weight_index_map` is the same packing as a ``relax.op.layout_transform``
index map (with ``pad_value=0``), so a converter can pack constant weights
in the graph and have ``LiftTransformParams`` run it once at compile time;
`pack_weight` does it in numpy for tests and benchmarks.

A bf16 weight (``tdpbf16ps``, its bits as uint16) packs the same way with
groups of two: ``Wp[N/32, K/2, 32, 2]``, so a panel row is again 128 bytes
and the GEMM's tile loads are byte for byte the int8 ones (``group=2``
below; K a multiple of 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PANEL = 32  # output columns per panel: two 16-column tiles side by side
GROUP = 4  # int8 values per dword, the dot-product depth of one tdpbusd step


BF16_GROUP = 2  # bf16 values per dword, the dot-product depth of one tdpbf16ps step


def check_k(k: int, group: int = GROUP) -> None:
    if k < group or k % group:
        raise ValueError(f"the AMX GEMM needs K a positive multiple of {group}, got {k}: pad K with zeros")


def packed_shape(n: int, k: int, group: int = GROUP) -> tuple[int, int, int, int]:
    """The shape of the packed ``W[n, k]``: ``(ceil(n/32), k/group, 32, group)``."""
    check_k(k, group)
    return (-(-n // PANEL), k // group, PANEL, group)


def weight_index_map(n: Any, k: Any) -> tuple[Any, Any, Any, Any]:
    """``(n, k) -> (n // 32, k // 4, n % 32, k % 4)``: `pack_weight` as a layout_transform index map."""
    return (n // PANEL, k // GROUP, n % PANEL, k % GROUP)


def bf16_weight_index_map(n: Any, k: Any) -> tuple[Any, Any, Any, Any]:
    """``(n, k) -> (n // 32, k // 2, n % 32, k % 2)``: the bf16 packing as a layout_transform index map."""
    return (n // PANEL, k // BF16_GROUP, n % PANEL, k % BF16_GROUP)


def pack_weight(w: Any) -> np.ndarray:
    """Pack an int8 ``W[N, K]`` (numpy or a CPU torch tensor) into ``Wp[N/32, K/4, 32, 4]``.

    A uint16 ``W`` (bf16 bits) packs into ``Wp[N/32, K/2, 32, 2]``.
    """
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype not in (np.int8, np.uint16):
        raise ValueError(f"expected a 2-D int8 (or uint16 bf16 bits) weight [N, K], got {w.dtype} {w.shape}")
    group = GROUP if w.dtype == np.int8 else BF16_GROUP
    n, k = w.shape
    np_, g, _, _ = packed_shape(n, k, group)
    padded = np.zeros((np_ * PANEL, k), w.dtype)
    padded[:n] = w
    return np.ascontiguousarray(padded.reshape(np_, PANEL, g, group).transpose(0, 2, 1, 3))
