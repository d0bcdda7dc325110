"""CPU schedule rule for fp32 matmul / dense / batch-matmul with fused epilogues.

TVM 0.27 ships no CPU matmul schedule: legalized ``R.matmul`` runs as a naive
serial triple loop. This dlight rule matches a PrimFunc whose one reduction
block computes ``C[b.., i, j] += A[b.., i, k] * B[b.., k, j]`` (any batch
dims; ``B`` may be ``[j, k]``) and whose other blocks are injective prologues
(inlined) or epilogues (bias, activation, residual add: fused into the tile).

Schedule (register blocking, the classic BLIS micro-kernel shape):

    for (batch, j-panel, i-block) in parallel:        # fused outer loops
      acc[MR, NR*VL] = 0                               # cache_write, "local"
      for k: for ii in MR (unrolled): for jv in NR*VL (vectorized):
        acc[ii, jv] += A[i, k] * B[k, j]
      C[...] = epilogue(acc)                           # reverse_compute_at

``VL`` is the target's fp32 vector width (8 for AVX2, 16 for AVX-512);
``MR x NR`` keeps the accumulators in registers (6x2 vectors on AVX2, 8x3 on
AVX-512). Panel-outer order (j before i) reuses the B panel from cache.
Shapes that do not divide the tile get predicated tails (correct, slower).
Weights are not yet packed into panels at compile time: that is the next step
of the kernel work. Anything the rule does not recognise returns None, so the
next rule (or TVM's default lowering) handles it.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

log = logging.getLogger(__name__)


def vector_lanes(target: Target, bits: int = 32) -> int:
    """Lanes of the widest vector register the target's CPU really has.

    (``llvm_get_vector_width`` answers 512 for AVX2-only CPUs such as znver3.)
    """
    if llvm_cpu_has_features(["avx512f"], target):
        width = 512
    elif llvm_cpu_has_features(["avx2"], target) or llvm_cpu_has_features(["avx"], target):
        width = 256
    else:
        width = 128
    return max(width // bits, 1)


# Below this many multiply-adds a kernel runs on the calling thread: waking the
# pool costs tens of microseconds, more than such a kernel takes (digits CNN).
PARALLEL_MIN_MACS = 1 << 21


def work(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int | None:
    """The block's iteration count (multiply-adds for a matmul/conv), None if symbolic."""
    total = 1
    for loop in sch.get_loops(block):
        extent = get_extent(sch, loop)
        if not isinstance(extent, int):
            return None
        total *= extent
    return total


def parallel_if_worth_it(
    sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, amount: int | None, minimum: int = PARALLEL_MIN_MACS
) -> None:
    """Parallelize `loop` unless the kernel's work is known to be below `minimum`."""
    if amount is None or amount >= minimum:
        sch.parallel(loop)


def register_tile(target: Target) -> tuple[int, int, int]:
    """(MR rows, NR vectors, VL lanes) of the accumulator tile for `target`.

    MR x NR accumulators plus one B load per vector fit the register file:
    6x2 of 16 ymm registers (AVX2), 8x3 of 32 zmm registers (AVX-512).
    Packed weight panels are NR*VL columns wide (see pack_weights.py).
    """
    lanes = vector_lanes(target)
    return (8, 3, lanes) if lanes >= 16 else (6, 2, lanes)


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
    """One R iter last, >= 2 S iters, two reads, a multiply-accumulate body."""
    stmt = sch.get(block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    if len(kinds) < 3 or kinds[-1] != tirx.IterVar.CommReduce or any(k != tirx.IterVar.DataPar for k in kinds[:-1]):
        return False
    if len(stmt.reads) != 2 or len(stmt.writes) != 1 or stmt.writes[0].source.dtype != "float32":
        return False
    body = stmt.body
    return (
        isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add) and isinstance(body.value.b, tirx.Mul)
    )


class CPUMatmul(CPUScheduleRule):
    """Register-blocked, vectorized, parallel fp32 matmul (see module docstring)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._schedule(func, target)
        except Exception as exc:  # a rule must never break the build: fall back
            log.debug("CPUMatmul skipped %s: %s", func.attrs.get("global_symbol") if func.attrs else "?", exc)
            return None

    def _schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [b for b in infos if not b.is_injective()]
        if len(reductions) != 1 or not _is_matmul(sch, reductions[0].block_rv):
            return None
        main = reductions[0].block_rv
        position = [b.block_rv for b in infos].index(main)
        for info in infos[:position]:  # prologue (reshape, transpose): into the matmul
            sch.compute_inline(info.block_rv)
        mr, nr, lanes = register_tile(target)
        loops = sch.get_loops(main)
        *batch, i, j, k = loops
        mr = _rows_per_tile(get_extent(sch, i), mr)
        macs = work(sch, main)
        n_extent = get_extent(sch, j)
        if isinstance(n_extent, int) and n_extent < lanes:
            nr, lanes = 1, max(1, n_extent)
        io, ii = sch.split(i, factors=[None, mr])
        jo, ji = sch.split(j, factors=[None, nr * lanes])
        sch.reorder(*batch, jo, io, k, ii, ji)
        outer = sch.fuse(*batch, jo, io)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(acc, outer, preserve_unit_loops=True)
        for info in infos[position + 1 :]:  # epilogue: fused into the tile
            sch.reverse_compute_at(info.block_rv, outer, preserve_unit_loops=True)
        for block in [acc] + [info.block_rv for info in infos[position + 1 :]]:
            self._vectorize_tail(sch, block, lanes)
        ji_o, ji_i = sch.split(ji, factors=[None, lanes])
        sch.vectorize(ji_i)
        sch.unroll(ji_o)
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
