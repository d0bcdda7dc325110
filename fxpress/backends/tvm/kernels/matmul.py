"""CPU schedule rule for fp32 matmul / dense / batch-matmul with fused epilogues.

TVM 0.27 ships no CPU matmul schedule: legalized ``R.matmul`` runs as a naive
serial triple loop. This dlight rule matches a PrimFunc whose one reduction
block computes ``C[b.., i, j] += A[b.., i, k] * B[b.., k, j]`` (any batch
dims; ``B`` may be ``[j, k]``) and whose other blocks are injective prologues
(inlined) or epilogues (bias, activation, residual add: fused into the tile).

Schedule (register blocking, the classic BLIS micro-kernel shape):

    for (batch, j-panel, i-block) in parallel:        # fused outer loops
      acc[MR, NR*VL] = 0                               # cache_write, ACC_SCOPE
      for k: for ii in MR (unrolled): for jv in NR*VL (vectorized):
        acc[ii, jv] += A[i, k] * B[k, j]
      C[...] = epilogue(acc)                           # reverse_compute_at

``VL`` is the target's fp32 vector width (8 for AVX2, 16 for AVX-512);
``MR x NR`` keeps the accumulators in registers (6x2 vectors on AVX2; on
AVX-512 8x3, or 12x2, 6x4, 14x1 where NR must divide N/16). Panel-outer order
(j before i) reuses the B panel from cache. Constant weights are packed into
``[N/P, K, P]`` panels at compile time (pack_weights.py), P = NR*VL.

A vector with a predicated tail makes TVM run the whole loop scalar, so on
AVX-512 NR divides N where 16 does (`matmul_panel` for packed weights,
`_wide_tile` for batch matmuls: 3 vectors of 48 divide neither 64 nor 128),
and a packed N that 16 does not divide is computed over its zero-padded last
panel, then sliced. Rows that MR does not divide get a predicated tail on
the unrolled row loop (a branch, the vectors stay whole). A single-row
product with packed weights (a classifier head at batch 1, its row loop
normalized away) is scheduled as one row of the same tile on AVX-512; on
AVX2 it is left to dlight's reduction rule, as before. Anything the rule
does not recognise returns None, so the next rule (or TVM's default
lowering) handles it.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import (
    ACC_SCOPE,
    FxpressCPURule,
    attach_epilogue,
    find_kernel,
    is_multiply_accumulate,
    parallel_if_worth_it,
    vector_lanes,
    work,
)

PACKED = "matmul_packed"  # pack_weights.py's name of the block that reads packed panels


def register_tile(target: Target) -> tuple[int, int, int]:
    """(MR rows, NR vectors, VL lanes) of the accumulator tile for `target`.

    MR x NR accumulators plus one B load per vector fit the register file:
    6x2 of 16 ymm registers (AVX2), 8x3 of 32 zmm registers (AVX-512).
    Packed weight panels are NR*VL columns wide (see pack_weights.py).
    """
    lanes = vector_lanes(target)
    return (8, 3, lanes) if lanes >= 16 else (6, 2, lanes)


# AVX-512 register tiles: rows for NR vectors of 16 lanes, about 24 zmm accumulators of 32.
_WIDE_ROWS = {3: 8, 2: 12, 4: 6, 1: 14}


def matmul_panel(n: int, target: Target) -> int:
    """P, the columns of one packed weight panel (= the register tile's width) for an N-column matmul.

    AVX2 and narrower: ``NR * VL`` of `register_tile` (16), as measured there.
    AVX-512: NR vectors of 16 with NR dividing N/16 (3, else 2, 4, 1), so no
    vector of the tile needs a predicate; N not a multiple of 16 is padded to
    panels of 48 and the matmul computed over the padding (pack_weights.py).
    """
    _, nr, lanes = register_tile(target)
    if lanes < 16 or n % lanes:
        return nr * lanes
    return lanes * next(v for v in (3, 2, 4, 1) if (n // lanes) % v == 0)


def _wide_tile(n: int | object, lanes: int) -> int:
    """NR for an N-column AVX-512 tile over unpacked B (batch matmul): dividing N/16 where it can."""
    if not isinstance(n, int) or n % lanes:
        return 3
    return next(v for v in (3, 2, 4, 1) if (n // lanes) % v == 0)


def _rows_per_tile(m: int | object, preferred: int) -> int:
    """Rows of the register tile: the largest that divides M, near `preferred`.

    A tile that does not divide M puts a predicate on every FMA of the inner
    loop (about 40 % slower), so a smaller exact tile wins.
    """
    if not isinstance(m, int):
        return preferred
    for rows in range(preferred, 2, -1):
        if m % rows == 0:
            return rows
    return preferred if m > preferred else m


def _is_matmul(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Spatial iterators then one reduction, two reads, a multiply-accumulate body.

    With one spatial iterator (a single-row matmul, its unit row loop
    normalized away) only a panel-packed weight (rank 3) is taken: that is the
    product of a vector and a packed matrix, nothing else reads so.
    """
    stmt = sch.get(block)
    n = len(stmt.iter_vars)
    if len(stmt.reads) != 2 or not is_multiply_accumulate(stmt, "S" * (n - 1) + "R"):
        return False
    return n >= 3 or (n == 2 and stmt.name_hint.startswith(PACKED))


def _panel(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int | None:
    """P of a panel-packed ``[N/P, K, P]`` weight read by the matmul block, None when B is not packed."""
    stmt = sch.get(block)
    if not stmt.name_hint.startswith(PACKED):
        return None
    shapes = [r.source.shape for r in stmt.reads if len(r.source.shape) == 3]
    return int(shapes[-1][-1]) if shapes and isinstance(shapes[-1][-1], tirx.IntImm | int) else None


class CPUMatmul(FxpressCPURule):
    """Register-blocked, vectorized, parallel fp32 matmul (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        kernel = find_kernel(func, _is_matmul)
        if kernel is None:
            return None
        sch, main = kernel.sch, kernel.main
        for block in kernel.before:  # prologue (reshape, transpose): into the matmul
            sch.compute_inline(block)
        mr, nr, lanes = register_tile(target)
        loops = sch.get_loops(main)
        if len(loops) == 2:  # one row: x[K] times packed panels (AVX-512; elsewhere dlight's reduction rule)
            if lanes < 16:
                return None
            *batch, i, j, k = [], None, *loops
        else:
            *batch, i, j, k = loops
        n_extent = get_extent(sch, j)
        panel = _panel(sch, main)
        if lanes >= 16:  # AVX-512: NR from the packed panel, or dividing N (a vector with a tail runs scalar)
            nr = panel // lanes if panel and panel % lanes == 0 else _wide_tile(n_extent, lanes)
            mr = _WIDE_ROWS.get(nr, mr)
        mr = _rows_per_tile(get_extent(sch, i), mr) if i is not None else 1
        macs = work(sch, main)
        if isinstance(n_extent, int) and n_extent < lanes:
            nr, lanes = 1, max(1, n_extent)
        jo, ji = sch.split(j, factors=[None, nr * lanes])
        if i is None:
            sch.reorder(jo, k, ji)
            outer, ii = jo, None
        else:
            io, ii = sch.split(i, factors=[None, mr])
            sch.reorder(*batch, jo, io, k, ii, ji)
            outer = sch.fuse(*batch, jo, io)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, ACC_SCOPE)
        sch.reverse_compute_at(acc, outer, preserve_unit_loops=True)
        epilogue = attach_epilogue(sch, [main, acc], kernel.after, outer)
        for block in [acc, *epilogue]:
            self._vectorize_tail(sch, block, lanes)
        ji_o, ji_i = sch.split(ji, factors=[None, lanes])
        sch.vectorize(ji_i)
        sch.unroll(ji_o)
        if ii is not None:
            sch.unroll(ii)
        sch.decompose_reduction(main, k)
        return sch

    @staticmethod
    def _vectorize_tail(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
        inner = sch.get_loops(block)[-1]
        extent = get_extent(sch, inner)
        if isinstance(extent, int) and extent % lanes == 0 and extent >= lanes:
            _, vec = sch.split(inner, factors=[None, lanes])
            sch.vectorize(vec)
