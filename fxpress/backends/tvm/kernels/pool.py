"""CPU schedule rule for te_pool's separable max-pool: both passes vectorized along the output width.

Matches a PrimFunc made of exactly the ``pool_rows`` and ``pool_cols`` blocks
(the converter emits it unfused, so nothing else joins it). Each pass loops
over (n, c, y) in parallel when large enough and vectorizes ``xo`` by the
widest power of two that divides it, up to the register's lanes.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import PARALLEL_MIN_ELEMENTS, FxpressCPURule, vector_lanes
from fxpress.backends.tvm.te_pool import COLS, ROWS


class CPUSeparablePool(FxpressCPURule):
    """Vectorize and parallelize te_pool's two passes (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if [sch.get(b).name_hint for b in blocks] != [ROWS, COLS]:
            return None
        for block in blocks:
            *outer, xo = sch.get_loops(block)
            width = get_extent(sch, xo)
            lanes = vector_lanes(target, sch.get(block).writes[0].source.dtype.bits)
            if isinstance(width, int):
                vec = next((v for v in (lanes, 32, 16, 8, 4) if v <= lanes and width % v == 0), 1)
                if vec > 1:
                    _, inner = sch.split(xo, factors=[None, vec])
                    sch.vectorize(inner)
            fused = sch.fuse(*outer)
            rows = get_extent(sch, fused)
            if not isinstance(rows, int) or rows * (width if isinstance(width, int) else 1) >= PARALLEL_MIN_ELEMENTS:
                sch.parallel(fused)
        return sch
