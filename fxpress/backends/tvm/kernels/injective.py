"""CPU schedule rule for element-wise and layout ops (add, GELU, transpose, ...).

Without a schedule every fused element-wise PrimFunc is a serial scalar loop
nest. This rule matches PrimFuncs whose blocks are all injective (no
reduction): earlier blocks are inlined where TVM allows, and the last block's
loops are fused into one, split into vector-width chunks (vectorized when the
total divides evenly) and the chunk loop is parallelized when there is enough
work to pay for waking the thread pool. A vector never spans two runs of the
innermost loops when a run is a multiple of 16 elements (`_lanes`).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import PARALLEL_MIN_ELEMENTS, FxpressCPURule, vector_lanes


class CPUInjective(FxpressCPURule):
    """Fuse, vectorize and parallelize injective PrimFuncs."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        for info in infos[:-1]:
            try:
                sch.compute_inline(info.block_rv)
            except Exception:
                continue
        last = infos[-1].block_rv
        loops = sch.get_loops(last)
        if not loops:
            return None
        lanes = _lanes(sch, loops, vector_lanes(target, sch.get(last).writes[0].source.dtype.bits))
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = get_extent(sch, fused)
        if not isinstance(extent, int):
            return None
        if extent % lanes == 0 and extent >= lanes:
            outer, vec = sch.split(fused, factors=[None, lanes])
            sch.vectorize(vec)
        else:
            outer = fused
        if extent >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(outer)
        return sch


def _lanes(sch: s_tir.Schedule, loops: list, lanes: int) -> int:
    """The vector width: `lanes`, or the innermost loops' run where that is a multiple of 16 below it.

    A vector that spans two runs of the innermost loops (two pixels of a
    32-channel uint8 NHWC image, two window positions of an im2col row) reads
    from addresses TVM cannot prove contiguous and becomes a gather: a pruned
    ResNet-18's 32-channel int8 stages ran their im2col and requantization
    3-10x slower than the 64-channel ones (examples/combined_prune_int8.py).
    Runs that are not a multiple of 16 (an RGB image's 3 or 4 channels, a
    width of 7) keep the full width, as before.
    """
    run = 1
    for loop in reversed(loops):
        extent = get_extent(sch, loop)
        if not isinstance(extent, int) or run * extent > lanes:
            break
        run *= extent
    if run < lanes and run % 16 == 0:
        while lanes > run or run % lanes:
            lanes //= 2
    return lanes
