"""CPU schedule rule for the int8 conv prologue of an input with at most one channel group (the RGB stem).

te_conv's prologues write ``P[n, y, x, C/V, V]`` from NCHW. With C/V >= 2
the injective rule's vectors over the fused (x, C/V, V) loop do well; with
one group (C <= V: ResNet's 3-channel stem) each vector gathers from three
planes and through the padding tests per lane: 0.5 ms for 224x224x3, where
a scalar loop over rows in parallel with the V lanes unrolled takes 0.17 ms
(0.05 from int8). Earlier blocks (the stem's quantize) run once per input
row, vectorized, under the same loop.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import PARALLEL_MIN_ELEMENTS, FxpressCPURule, vector_lanes
from fxpress.backends.tvm.te_conv import PROLOGUES


class CPUConvStemPrologue(FxpressCPURule):
    """Scalar rows in parallel for a one-group conv prologue (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        last = infos[-1].block_rv
        out = sch.get(last).writes[0].source
        if sch.get(last).name_hint not in PROLOGUES or len(out.shape) != 5 or int(out.shape[3]) != 1:
            return None
        loops = sch.get_loops(last)  # (n, y, x, lane): the one group's unit loop (and a unit n) are gone
        if len(loops) < 3:
            return None
        sch.unroll(loops[-1])
        rows = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
        sch = _producers_per_row(sch, [i.block_rv for i in infos[:-1]], rows, vector_lanes(target, 32))
        extent = get_extent(sch, rows)
        if not isinstance(extent, int) or extent * int(out.shape[2]) * int(out.shape[4]) >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(rows)
        return sch


def _producers_per_row(
    sch: s_tir.Schedule, blocks: list[s_tir.schedule.SBlockRV], rows: s_tir.schedule.LoopRV, lanes: int
) -> s_tir.Schedule:
    """Compute the prologue's producers (the stem's quantize) one input row at a time, vectorized.

    Inlined, the quantize's float math runs scalar inside the packing loop;
    per row it runs first, in vectors, and the packing only moves bytes.
    Falls back to inlining where TVM cannot bound a producer's region per row.
    """
    trial = sch.copy()
    try:
        for block in reversed(blocks):
            trial.compute_at(block, rows, preserve_unit_loops=True)
            inner = trial.get_loops(block)[-1]
            extent = get_extent(trial, inner)
            if isinstance(extent, int) and extent % lanes == 0:
                _, vec = trial.split(inner, factors=[None, lanes])
                trial.vectorize(vec)
        return trial
    except Exception:
        for block in blocks:
            sch.compute_inline(block)
        return sch
