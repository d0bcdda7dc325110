"""CPU schedule rule for row-wise normalizations: softmax and layer norm with their fused epilogues.

dlight's CPU reduction rule leaves these as serial scalar loop nests over the
whole tensor: on all-MiniLM-L6-v2 int8 a softmax (12 x 128 rows of 128, then
its quantize) took 0.6 ms and a layer norm 0.13 ms, 13 % of the run together.
A function qualifies when its last block is injective over ``[rows.., L]``
and every reduction block reduces one (last) axis per row, with the same
leading extents (``max``/``sum`` of softmax, the mean/variance of layer norm,
the per-row min/max of dynamic quantization).
The schedule puts everything under one loop over the rows (parallel when
large enough): each block computes its row there, element-wise blocks
vectorized along L; an element-wise block with one element-wise consumer
(softmax's normalize before its quantize) is inlined into it.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import PARALLEL_MIN_ELEMENTS, FxpressCPURule, vector_lanes


def _kinds(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> str:
    return "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in sch.get(block).iter_vars)


def _extents(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> list[int | None]:
    return [int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else None for iv in sch.get(block).iter_vars]


class CPURowReduction(FxpressCPURule):
    """One parallel loop over rows; per row, reductions then vectorized element-wise blocks (see module doc)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or len(infos) < 2 or not infos[-1].is_injective():
            return None
        last = infos[-1].block_rv
        shape = _extents(sch, last)
        if len(shape) < 2 or None in shape or _kinds(sch, last) != "S" * len(shape):
            return None
        rows, length = shape[:-1], shape[-1]
        reductions = [b.block_rv for b in infos if not b.is_injective()]
        if not reductions:
            return None
        for block in reductions:
            kinds, ext = _kinds(sch, block), _extents(sch, block)
            lead = [e for e, k in zip(ext, kinds, strict=True) if k == "S" and e != 1]
            if kinds.count("R") != 1 or not kinds.endswith("R") or ext[-1] is None:
                return None
            if lead != [e for e in rows if e != 1]:
                return None
        for info in infos[:-1]:  # element-wise with only element-wise consumers: into them
            if info.is_injective():
                consumers = sch.get_consumers(info.block_rv)
                if consumers and all(_kinds(sch, c) == "S" * len(_extents(sch, c)) for c in consumers):
                    sch.compute_inline(info.block_rv)
        lanes = vector_lanes(target, 32)
        partials = []
        for block in reductions:  # rfactor needs each reduction in its own loop nest: before compute_at
            if _extents(sch, block)[-1] % lanes == 0:
                sch, partial = _vector_partials(sch, block, lanes)
                partials += [partial] if partial is not None else []
        loops = sch.get_loops(last)
        row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        if length % lanes == 0:
            _, vec = sch.split(loops[-1], factors=[None, lanes])
            sch.vectorize(vec)
        root = sch.get_sblock("root")
        remaining = [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint != sch.get(last).name_hint]
        for block in reversed(remaining):
            sch.compute_at(block, row, preserve_unit_loops=True)
        for block in remaining:  # element-wise over a row (not per-row values: their loop is a unit one)
            inner = sch.get_loops(block)[-1]
            extent = get_extent(sch, inner)
            if _kinds(sch, block).count("R") == 0 and isinstance(extent, int) and extent % lanes == 0:
                _, vec = sch.split(inner, factors=[None, lanes])
                sch.vectorize(vec)
        for partial in partials:  # under the row: (lane, unit loops.., reduction) -> (reduction, lane, ..)
            loops = sch.get_loops(partial)
            sch.reorder(loops[-1], loops[1])
            sch.vectorize(loops[1])
        if math.prod(rows) * length >= PARALLEL_MIN_ELEMENTS and get_extent(sch, row) > 1:
            sch.parallel(row)
        return sch


def _vector_partials(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int
) -> tuple[s_tir.Schedule, s_tir.schedule.SBlockRV | None]:
    """Reduce a row in `lanes` partials first (rfactor: a vector accumulator), then across them.

    A scalar sum over a row is one chain of dependent float adds (3 cycles
    each); `lanes` independent partials take 1/lanes of that. Returns the
    schedule with the partials' block, or `sch` unchanged and None where TVM
    refuses (that reduction then stays scalar).
    """
    trial = sch.copy()
    try:
        _, inner = trial.split(trial.get_loops(block)[-1], factors=[None, lanes])
        return trial, trial.rfactor(inner, factor_axis=0)
    except Exception:
        return sch, None
