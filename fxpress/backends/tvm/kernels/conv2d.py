"""CPU schedule rule for fp32 NCHW conv2d (regular, grouped, depthwise) with epilogues.

Matches a PrimFunc with one reduction block over ``(n, f, y, x | rc, ry, rx)``
(``n`` absent when it is 1)
(what TVM legalizes ``R.nn.conv2d`` to), an optional padding block before it
and injective epilogue blocks (bias, ReLU, residual add) after it.

Schedule, a direct convolution with register blocking:

    pad computed first (parallel, vectorized)
    for (n, f-block, y) in parallel:
      for x-block:
        acc[FR, XR*VL] = 0                         # cache_write, TILE_SCOPE
        for rc, ry, rx: for fi in FR (unrolled): for xv in XR*VL (vector):
          acc[fi, xv] += W[f, rc, ry, rx] * pad[n, rc, y*s+ry, (x+xv)*s+rx]
        write back
      epilogue over the row                        # reverse_compute_at

The output width is the vector axis (contiguous in NCHW; stride-1 input rows
are contiguous loads), output channels are the register axis (one weight
broadcast feeds XR vectors). Widths that do not divide the tile get predicated
tails. A blocked NCHWc layout would do better on the 7x7 and 14x14 stages;
that is the next step of the kernel work. Unrecognised functions, and sizes
other than the batch that are symbolic, return None.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import (
    PARALLEL_MIN_ELEMENTS,
    FxpressCPURule,
    attach_epilogue,
    find_kernel,
    is_multiply_accumulate,
    parallel_if_worth_it,
    vector_lanes,
    work,
)
from fxpress.backends.tvm.kernels.matmul import register_tile


def _is_conv2d(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    # (n,) f, y, x | (rc,) ry, rx: depthwise convs reduce over the window only
    stmt = sch.get(block)
    if len(stmt.writes[0].source.shape) != 4:  # NCHW out; the int8 GEMM's [rows, N/8, 8] also reads "SSSRR"
        return False
    if is_multiply_accumulate(stmt, ("SSSRRR", "SSSSRRR", "SSSRR", "SSSSRR")):
        return True
    # a 1x1 conv's unit window loops are normalized away: (n,) f, y, x | rc, which is also the
    # shape of a batched matmul, so only the packed form (its rank-5 weight) is taken as a conv
    return is_multiply_accumulate(stmt, ("SSSR", "SSSSR")) and any(len(r.source.shape) == 5 for r in stmt.reads)


# Output columns per register tile, tried in order: the first that divides the
# width (a predicated tail costs several times more). 4 first: 4 x 2 vectors of
# accumulators leave registers for the weights and the broadcast input on AVX2
# (7 x 2 spilled: 56x56 ran 1.6x slower); 7 covers the 14 and 7 wide stages.
# The fp32 conv tile stays in "local" scope (a TVMBackendAllocWorkspace per
# tile), unlike the GEMM tiles (base.ACC_SCOPE): measured on ResNet-18, the
# 14-wide stages' 7-column tiles, which spill, ran 2x slower from the stack.
TILE_SCOPE = "local"
XR_ORDER = (4, 6, 7, 5, 3, 2)


class CPUConv2d(FxpressCPURule):
    """Register-blocked direct NCHW conv2d (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        kernel = find_kernel(func, _is_conv2d)
        if kernel is None:
            return None
        sch, main = kernel.sch, kernel.main
        if not all(isinstance(get_extent(sch, loop), int) for loop in sch.get_loops(main)[1:]):
            # Symbolic sizes past the batch (dynamic H/W): TVM 0.27 bounds this schedule's tiles under the fused
            # outer loop too loosely, and a stride-2 conv before a depthwise one computed wrong values. Left to
            # the next rule (slower, correct); a symbolic batch alone is fine and stays here.
            return None
        if any(len(r.source.shape) == 5 for r in sch.get(main).reads):
            acc = self._schedule_packed(sch, main, target)
        else:
            acc = self._schedule_nchw(sch, main, target)
        outer = sch.get_loops(main)[0]
        attach_epilogue(sch, [main, acc], kernel.after, outer)
        for block in kernel.before:  # padding: its own parallel loop nest
            loops = sch.get_loops(block)
            pad_loop = sch.fuse(*loops[:-1]) if len(loops) > 1 else loops[0]
            parallel_if_worth_it(sch, pad_loop, work(sch, block), PARALLEL_MIN_ELEMENTS)
        sch.decompose_reduction(main, sch.get_loops(main)[2])
        return sch

    @staticmethod
    def _schedule_packed(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, target: Target) -> s_tir.schedule.SBlockRV:
        """Weights packed [O/P, I, KH, KW, P]: vectors over output channels, XR output columns."""
        _, nr, lanes = register_tile(target)
        macs = work(sch, main)
        loops = sch.get_loops(main)
        n_red = sum(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(main).iter_vars)
        *batch, f, y, x = loops[: len(loops) - n_red]
        reduction = loops[len(loops) - n_red :]  # rc, ry, rx (rc alone for a 1x1 conv)
        width = get_extent(sch, x)
        xr = next((r for r in XR_ORDER if isinstance(width, int) and width % r == 0), 6)
        fo, fi = sch.split(f, factors=[None, nr * lanes])
        xo, xi = sch.split(x, factors=[None, xr])
        sch.reorder(*batch, fo, y, xo, *reduction, xi, fi)
        outer = sch.fuse(*batch, fo, y)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, TILE_SCOPE)
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        fi_o, fi_i = sch.split(fi, factors=[nr, lanes])
        sch.vectorize(fi_i)
        sch.unroll(fi_o)
        sch.unroll(xi)
        return acc

    @staticmethod
    def _schedule_nchw(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, target: Target) -> s_tir.schedule.SBlockRV:
        """Plain OIHW weights (depthwise, grouped): vectors over output columns."""
        lanes = vector_lanes(target)
        macs = work(sch, main)
        loops = sch.get_loops(main)  # a unit batch loop is normalized away; depthwise has no rc
        n_red = sum(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(main).iter_vars)
        reduction = loops[len(loops) - n_red :]
        *batch, f, y, x = loops[: len(loops) - len(reduction)]
        width = get_extent(sch, x)
        channels = get_extent(sch, f)
        xr = 2 if isinstance(width, int) and width >= 2 * lanes else 1
        fr = 6 if xr == 1 else 4
        fr = min(fr, channels) if isinstance(channels, int) else fr
        fo, fi = sch.split(f, factors=[None, fr])
        xo, xi = sch.split(x, factors=[None, xr * lanes])
        sch.reorder(*batch, fo, y, xo, *reduction, fi, xi)
        outer = sch.fuse(*batch, fo, y)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, TILE_SCOPE)
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        xi_o, xi_i = sch.split(xi, factors=[None, lanes])
        sch.vectorize(xi_i)
        sch.unroll(xi_o)
        sch.unroll(fi)
        return acc
