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
tails. Packed weights ([O/P, I, KH, KW, P], pack_weights.py) turn it around:
vectors over P output channels, XR output columns, one broadcast input per
column. Unrecognised functions, and sizes other than the batch that are
symbolic, return None.

AVX2 and narrower (8 lanes) use the tiles above as measured there. AVX-512
(16 lanes, 32 registers) has its own. The 8-lane tiles widened to 16 ran
ResNet-18 in 1.4 s: panels of 3 x 16 = 48 channels divide none of its 64 to
512, and TVM runs a vector loop whose body carries a per-lane predicate as
scalar code; and a "local" tile with columns innermost made every FMA gather
and scatter its accumulator. So:

- packed: P = NR vectors that divide the channels (`conv_panel`; 8-lane
  vectors for 24 or 40 channels, a zero-padded panel computed and sliced
  otherwise), the tile a stack buffer with channels innermost, the padding
  split into a vector zero fill and a vector interior copy;
- 1x1, stride 1, unpadded, whole vectors of pixels (`_schedule_pointwise`):
  ``W @ X[I, H*W]`` with vectors over pixels, so the tile and the epilogue
  store whole vectors instead of scattering across channel planes;
- depthwise: te_depthwise's wide rows (`_schedule_depthwise_wide`), every
  tap one contiguous vector load at any width or stride;
- other grouped convs: vectors that divide the row (16, 8, 4 or the row).
"""

from __future__ import annotations

import contextlib

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target
from tvm.tirx import IndexMap

from fxpress.backends.tvm.kernels.base import (
    PARALLEL_MIN_ELEMENTS,
    FxpressCPURule,
    Kernel,
    attach_epilogue,
    find_kernel,
    is_multiply_accumulate,
    parallel_if_worth_it,
    vector_lanes,
    work,
)
from fxpress.backends.tvm.te_depthwise import PHASES, PLANE, WIDE


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

# AVX-512 (32 zmm registers): NR vectors of output channels per tile, in order
# of preference (the first that divides the channel vectors), and the most
# output columns XR for each NR. LLVM keeps the broadcast inputs of the XR + KW
# - 1 columns of a row live across the unrolled window, so the accumulators
# stay near 16: 2 x 14 and 4 x 7 (28) spilled and ran 2x slower than 2 x 8 on
# ResNet-18's 56x56 3x3 conv. The tile is a stack buffer with channels
# innermost (so its vectors are registers; in "local" scope with columns
# innermost every FMA gathered and scattered its accumulator: 20x slower).
WIDE_NR = (2, 3, 1)
WIDE_XR = {1: 14, 2: 8, 3: 5, 4: 4}
WIDE_SCOPE = "global"
# Rows narrower than 8 (the 7x7 stage): 1 vector x 7 columns x 2 rows, each
# weight vector feeding 14 FMAs instead of 7 (its 512x512 3x3 conv: 138 against
# 123 GFLOP/s for 2 vectors x 7 columns of one row).
NARROW_WIDTH = 8
NARROW_ROWS = 2


def conv_panel(out_channels: int, target: Target, out_width: int | None = None) -> int:
    """P, the output channels of one packed weight panel (and of the register tile) for this conv.

    AVX2: 2 vectors of 8 (16), whatever the channel count. AVX-512: NR vectors
    of 16 (`WIDE_NR`) dividing the channels, one for rows narrower than
    `NARROW_WIDTH` (the tile spans rows instead); 8-lane vectors where 16 does
    not divide the channels but 8 does (24, 40), else 16 and the conv computed
    over the padding (pack_weights.py), so no vector of the tile carries a
    predicate.
    """
    lanes = vector_lanes(target)
    if lanes < 16:
        return 2 * lanes
    lanes = _panel_lanes(out_channels, lanes)
    if out_width is not None and out_width < NARROW_WIDTH:
        return lanes
    return lanes * _wide_vectors(-(-out_channels // lanes))


def _panel_lanes(channels: int, lanes: int) -> int:
    """16-lane vectors where they divide the channels, else 8 (24, 40: ymm, still exact), else 16 with padding."""
    return 8 if channels % lanes and channels % 8 == 0 else lanes


def _wide_vectors(vectors: int) -> int:
    """NR, the channel vectors of an AVX-512 register tile, dividing the conv's `vectors`."""
    return next((v for v in WIDE_NR if vectors % v == 0), 1)


def _wide_columns(nr: int, width: int | None) -> int:
    """XR for NR vectors: the largest divisor of the width from half the budget up, else the budget with a tail.

    A column tail costs only a branch per column (the channel vectors stay
    whole), a narrow tile costs its weight loads again per few columns.
    """
    budget = WIDE_XR.get(nr, max(16 // nr, 1))
    if width is None:
        return budget
    if width <= budget:
        return width
    return next((r for r in range(budget, max(budget // 2, 2) - 1, -1) if width % r == 0), budget)


def _is_depthwise_wide(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    stmt = sch.get(block)
    return stmt.name_hint == WIDE and is_multiply_accumulate(stmt, ("SSSRR", "SSSSRR", "SSRR"))


class CPUConv2d(FxpressCPURule):
    """Register-blocked direct NCHW conv2d (see module docstring)."""

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        kernel = find_kernel(func, lambda sch, b: _is_conv2d(sch, b) or _is_depthwise_wide(sch, b))
        if kernel is None:
            return None
        if kernel.sch.get(kernel.main).name_hint == WIDE:
            return _schedule_depthwise_wide(kernel, target)
        sch, main = kernel.sch, kernel.main
        if not all(isinstance(get_extent(sch, loop), int) for loop in sch.get_loops(main)[1:]):
            # Symbolic sizes past the batch (dynamic H/W): TVM 0.27 bounds this schedule's tiles under the fused
            # outer loop too loosely, and a stride-2 conv before a depthwise one computed wrong values. Left to
            # the next rule (slower, correct); a symbolic batch alone is fine and stays here.
            return None
        lanes = vector_lanes(target)
        if lanes >= 16 and not kernel.before:
            pointwise = _schedule_pointwise(kernel, target)
            if pointwise is not None:
                return pointwise
        if any(len(r.source.shape) == 5 for r in sch.get(main).reads):
            acc = self._schedule_packed(sch, main, target)
        else:
            acc = self._schedule_nchw(sch, main, target)
        outer = sch.get_loops(main)[0]
        for block in attach_epilogue(sch, [main, acc], kernel.after, outer):
            if lanes >= 16:  # along the row; left to LLVM, it gathered across channel planes
                _vectorize_inner(sch, block, lanes)
        for block in kernel.before:  # padding: its own parallel loop nest
            if lanes >= 16:
                _schedule_padding(sch, block, lanes)
                continue
            loops = sch.get_loops(block)
            pad_loop = sch.fuse(*loops[:-1]) if len(loops) > 1 else loops[0]
            parallel_if_worth_it(sch, pad_loop, work(sch, block), PARALLEL_MIN_ELEMENTS)
        sch.decompose_reduction(main, sch.get_loops(main)[2])
        return sch

    @staticmethod
    def _schedule_packed(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, target: Target) -> s_tir.schedule.SBlockRV:
        """Weights packed [O/P, I, KH, KW, P]: vectors over output channels, XR output columns."""
        macs = work(sch, main)
        loops = sch.get_loops(main)
        n_red = sum(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(main).iter_vars)
        *batch, f, y, x = loops[: len(loops) - n_red]
        reduction = loops[len(loops) - n_red :]  # rc, ry, rx (rc alone for a 1x1 conv)
        width = get_extent(sch, x)
        panel = next(int(r.source.shape[-1]) for r in sch.get(main).reads if len(r.source.shape) == 5)
        lanes = vector_lanes(target)
        wide = lanes >= 16
        if not wide:  # AVX2 and narrower: the 8-lane tile as measured there
            nr = max(panel // lanes, 1)
            xr = next((r for r in XR_ORDER if isinstance(width, int) and width % r == 0), 6)
        else:
            lanes = _panel_lanes(panel, lanes)
            nr = max(panel // lanes, 1)
            xr = _wide_columns(nr, width if isinstance(width, int) else None)
        fo, fi = sch.split(f, factors=[None, nr * lanes])
        xo, xi = sch.split(x, factors=[None, xr])
        height = get_extent(sch, y)
        narrow = wide and nr == 1 and isinstance(width, int) and width < NARROW_WIDTH
        yr = NARROW_ROWS if narrow and isinstance(height, int) and height > 1 else 1
        if yr > 1:
            yo, yi = sch.split(y, factors=[None, yr])
            sch.reorder(*batch, fo, yo, xo, *reduction, yi, xi, fi)
            outer = sch.fuse(*batch, fo, yo)
        else:
            yi = None
            sch.reorder(*batch, fo, y, xo, *reduction, xi, fi)
            outer = sch.fuse(*batch, fo, y)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, WIDE_SCOPE if wide else TILE_SCOPE)
        if wide:  # the tile [.., x, f]: channels innermost, each vector one register
            sch.transform_layout(main, ("write", 0), lambda *i: (*i[:-3], i[-2], i[-1], i[-3]))
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        fi_o, fi_i = sch.split(fi, factors=[nr, lanes])
        sch.vectorize(fi_i)
        sch.unroll(fi_o)
        sch.unroll(xi)
        if yi is not None:
            sch.unroll(yi)
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
        wide = lanes >= 16
        if wide and isinstance(width, int):  # AVX-512: vectors that divide the row (a tail runs the tile scalar)
            lanes, xr = _row_vectors(width, lanes)
            fr = max(1, 16 // xr)
        else:
            xr = 2 if isinstance(width, int) and width >= 2 * lanes else 1
            fr = 6 if xr == 1 else 4
        fr = min(fr, channels) if isinstance(channels, int) else fr
        fo, fi = sch.split(f, factors=[None, fr])
        xo, xi = sch.split(x, factors=[None, xr * lanes])
        sch.reorder(*batch, fo, y, xo, *reduction, fi, xi)
        outer = sch.fuse(*batch, fo, y)
        parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, WIDE_SCOPE if wide else TILE_SCOPE)
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        xi_o, xi_i = sch.split(xi, factors=[None, lanes])
        sch.vectorize(xi_i)
        sch.unroll(xi_o)
        sch.unroll(fi)
        return acc


def _row_vectors(width: int, lanes: int) -> tuple[int, int]:
    """(lanes, vectors) of an AVX-512 tile along an output row of `width`: both exact, at most 4 vectors.

    16, 8 or 4 lanes, the widest dividing the row; else the widest divisor
    up to 16 (a row of 7 or 14 is one odd-sized vector, which LLVM splits
    into its parts: 3-4x the scalar loop; a prime width above 16 runs scalar).
    """
    vec = next((v for v in (lanes, 8, 4) if width % v == 0), 0)
    if not vec:
        vec = next(v for v in range(min(width, 16), 0, -1) if width % v == 0)
    count = width // vec
    return vec, next(r for r in (4, 3, 2, 1) if count % r == 0)


def _vectorize_inner(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Vectorize `block`'s innermost loop by the widest of `lanes`, 8, 4, 2 that divides it (none: left scalar)."""
    inner = sch.get_loops(block)[-1]
    extent = get_extent(sch, inner)
    vec = next((v for v in (lanes, 8, 4, 2) if v <= lanes and isinstance(extent, int) and extent % v == 0), 0)
    if vec == extent:
        sch.vectorize(inner)
    elif vec:
        sch.vectorize(sch.split(inner, factors=[None, vec])[1])


def _pointwise_tile(panel: int, vectors: int) -> tuple[int, int] | None:
    """(FR channels, XV pixel vectors) of a pointwise tile: FR divides the panel, XV the plane's vectors."""
    for fr in (4, 6, 8, 3, 2, 1):
        if panel % fr:
            continue
        xv = next((v for v in range(min(24 // fr, 8), 0, -1) if vectors % v == 0), 1)
        if fr * xv >= 8:
            return fr, xv
    return None


def _schedule_pointwise(kernel: Kernel, target: Target) -> s_tir.Schedule | None:
    """A 1x1, stride-1, unpadded packed conv as ``W[O, I] @ X[I, H*W]``: vectors over the plane's pixels.

    The output tile (FR channels x XV vectors of 16 pixels) is contiguous in
    NCHW, so its write-back and the epilogue are vector loads and stores; the
    channel-vector tile scatters every output element, which costs more than
    the FMAs where the conv reduces over few channels (EfficientNet's 24- and
    40-channel projections ran at half eager's speed). The plane must be whole
    vectors (a tail would run scalar); else None, and the channel-vector tile
    is used. The kernel, the tile, its write-back and the epilogue iterate the
    flat pixel axis, so a tile may end mid-row.
    """
    trial = kernel.sch.copy()
    main = kernel.main
    stmt = trial.get(main)
    reads = [r.source for r in stmt.reads]
    weights = [b for b in reads if len(b.shape) == 5]
    images = [b for b in reads if len(b.shape) == 4]
    out = stmt.writes[0].source
    if len(weights) != 1 or len(images) != 1 or [int(d) for d in weights[0].shape[2:4]] != [1, 1]:
        return None
    if [int(d) for d in images[0].shape[2:]] != [int(d) for d in out.shape[2:]]:  # stride 1, no padding
        return None
    height, width = (int(d) for d in out.shape[2:])
    lanes = vector_lanes(target)
    plane = height * width
    tile = _pointwise_tile(int(weights[0].shape[-1]), plane // lanes)
    if plane % lanes or tile is None:
        return None
    fr, xv = tile

    def flat_iters(*i: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:  # (.., f, y, x, rc) -> (.., f, y * W + x, rc)
        return (*i[:-3], i[-3] * width + i[-2], i[-1])

    def flat(*i: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:
        return (*i[:-2], i[-2] * width + i[-1])

    try:
        loops = trial.get_loops(main)
        trial.transform_block_layout(main, IndexMap.from_func(flat_iters, ndim=len(loops)))
        *batch, f, p, rc = trial.get_loops(main)
        po, pv, pl = trial.split(p, factors=[None, xv, lanes])
        fo, fi = trial.split(f, factors=[None, fr])
        trial.reorder(*batch, po, fo, rc, fi, pv, pl)
        outer = trial.fuse(*batch, po, fo)
        parallel_if_worth_it(trial, outer, work(trial, main))
        acc = trial.cache_write(main, 0, WIDE_SCOPE)
        trial.transform_layout(main, ("write", 0), IndexMap.from_func(flat, ndim=len(out.shape)))
        trial.transform_block_layout(acc, IndexMap.from_func(flat, ndim=len(trial.get(acc).iter_vars)))
        after = kernel.after
        if after:  # the conv's own result is an intermediate: flat too, so each tile's epilogue reads only its pixels
            for block in [acc, *after[:-1]]:  # intermediates between the kernel and the output: flat (n, f, p)
                trial.transform_layout(block, ("write", 0), IndexMap.from_func(flat, ndim=len(out.shape)))
            for block in after:
                trial.transform_block_layout(block, IndexMap.from_func(flat, ndim=len(trial.get(block).iter_vars)))
        trial.reverse_compute_at(acc, outer, preserve_unit_loops=True)
        for block in [acc, *attach_epilogue(trial, [main, acc], after, outer)]:
            _vectorize_inner(trial, block, lanes)
        trial.vectorize(pl)
        trial.unroll(pv)
        trial.unroll(fi)
        trial.decompose_reduction(main, rc)
    except Exception:  # not the expected shape (an epilogue of its own iteration space): the channel-vector tile
        return None
    return trial


def _schedule_padding(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """A padding block as a zero fill and an interior copy, each parallel and vectorized (AVX-512).

    As one block, its per-element border test keeps it scalar (TVM does not
    vectorize a loop whose body branches per lane). Not a padding pattern:
    the block stays one nest, parallel and vectorized where its rows allow.
    """
    amount = work(sch, block)
    try:
        fill = sch.decompose_padding(block, sch.get_loops(block)[0])
        sch.fuse(*sch.get_loops(fill))  # zeros over the whole buffer: one contiguous run
    except Exception:  # not the padding pattern
        fill = None
    for b in [block] if fill is None else [fill, block]:
        _vectorize_inner(sch, b, lanes)
        outer = [lp for lp in sch.get_loops(b) if sch.get(lp).kind != tirx.ForKind.VECTORIZED]
        if outer:
            parallel_if_worth_it(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0], amount, PARALLEL_MIN_ELEMENTS)


def _schedule_depthwise_wide(kernel: Kernel, target: Target) -> s_tir.Schedule | None:
    """te_depthwise's wide-row depthwise conv: per channel, pad, [phases], XR vectors of wide outputs, epilogue."""
    sch, main = kernel.sch, kernel.main
    lanes = vector_lanes(target)
    loops = sch.get_loops(main)
    if not all(isinstance(get_extent(sch, loop), int) for loop in loops):
        return None
    # The register tile is XR vectors of the flat (y, q) axis, which may start and end mid-row: the kernel, its
    # tile buffer and the tile's write-back all iterate that flat axis (a (y, q) write-back would copy whole rows,
    # some of them stale, and TVM bounds the tile buffer by whole rows)
    shape = sch.get(main).writes[0].source.shape
    pitch = int(shape[-1])

    def flat(*i: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:
        return (*i[:-2], i[-2] * pitch + i[-1])

    def flat_iters(*i: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:  # (.., y, q, ry, rx) -> (.., y * Q + q, ry, rx)
        return (*flat(*i[:-2]), *i[-2:])

    sch.transform_block_layout(main, IndexMap.from_func(flat_iters, ndim=len(loops)))
    *spatial, f, ry, rx = sch.get_loops(main)
    vectors = get_extent(sch, f) // lanes
    xr = next(r for r in (8, 7, 6, 5, 4, 3, 2, 1) if vectors % r == 0)
    fo, fv, fl = sch.split(f, factors=[None, xr, lanes])
    sch.reorder(*spatial, fo, ry, rx, fv, fl)
    outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    parallel_if_worth_it(sch, outer, work(sch, main))
    acc = sch.cache_write(main, 0, WIDE_SCOPE)
    sch.transform_layout(main, ("write", 0), IndexMap.from_func(flat, ndim=len(shape)))
    sch.transform_block_layout(acc, IndexMap.from_func(flat, ndim=len(sch.get(acc).iter_vars)))
    sch.reverse_compute_at(acc, fo, preserve_unit_loops=True)
    sch.vectorize(fl)
    sch.unroll(fv)
    sch.unroll(rx)
    _vectorize_inner(sch, acc, lanes)
    for block in kernel.after[:-1]:  # the slice to Ho x Wo and the epilogue: one pass
        with contextlib.suppress(Exception):  # not inlinable: left as its own pass
            sch.compute_inline(block)
    for block in attach_epilogue(sch, [main, acc], [b for b in kernel.after if _alive(sch, b)], outer):
        _vectorize_inner(sch, block, lanes)
    for block in reversed(kernel.before):  # each channel's planes, right before its taps
        sch.compute_at(block, outer, preserve_unit_loops=True)
    for block in kernel.before:
        if sch.get(block).name_hint == PLANE:
            fill = sch.decompose_padding(block, sch.get_loops(block)[1])
            sch.fuse(*sch.get_loops(fill)[1:])  # zeros over the whole plane: one contiguous run
            _vectorize_inner(sch, fill, lanes)
        if sch.get(block).name_hint != PHASES:  # a stride-s gather: left to LLVM, which deinterleaves with shuffles
            _vectorize_inner(sch, block, lanes)
    sch.decompose_reduction(main, ry)
    return sch


def _alive(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    try:
        sch.get(block)
    except Exception:
        return False
    return True
