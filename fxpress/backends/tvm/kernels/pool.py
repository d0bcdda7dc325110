"""CPU schedule rule for te_pool's max-pools: vectors along the contiguous axis, no gathers.

- The separable NCHW pool: a PrimFunc of exactly the ``pool_rows`` and
  ``pool_cols`` blocks (the converter emits it unfused, so nothing else joins
  it). Each pass loops over (n, c, y) in parallel when large enough and
  vectorizes ``xo`` by the widest power of two that divides it, up to the
  register's lanes.
- The one-pass NHWC pool (``max_pool_nhwc``): vectors along the channels,
  pixels in parallel. Its padding test then depends on the pixel only, one
  branch per vector; the injective rule's vectors over the fused loops cross
  pixels and ran it per lane (2.9 ms for ResNet-18's pool, 16x slower).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import PARALLEL_MIN_ELEMENTS, FxpressCPURule, vector_lanes
from fxpress.backends.tvm.te_pool import COLS, NHWC, ROWS


class CPUSeparablePool(FxpressCPURule):
    """Vectorize and parallelize te_pool's two passes (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(b).name_hint for b in blocks]
        if names != [ROWS, COLS] and names != [NHWC]:
            return None
        for block in blocks:
            *outer, xo = sch.get_loops(block)  # xo: the output width, or the channels (NHWC)
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
