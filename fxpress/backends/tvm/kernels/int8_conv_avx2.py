"""int8 conv2d on AVX2 with ``vpmaddubsw`` or ``vpmaddwd``: a direct convolution, exact, no im2col.

The ``quantized_conv2d`` converter (groups == 1) emits this data layout, with
V = 4 for the u8s8 micro-kernel and V = 2 for the s16 one (int8_avx2.py says
which a layer gets):

    P[n, Hp, Wp, C/V, V]             uint8 x + 128 | int16 x - x_zp, padded, NHWC channel groups (a prologue)
    B[O8, KH, KW, C/V, 8, V]         int8 | int16  weights packed at compile time: B[o/8, ky, kx, c/V, o%8, c%V]
    acc[n, y, x, O8, 8]              int32  sum over (ky, kx, c/V, c%V) of P * B
    out[n, o, y, x]                  int8   requantized per channel (the fused epilogue)

Schedule (the int8 GEMM micro-kernel of int8_avx2.py, with output pixels as rows):

    for (n, o-block, y) in parallel:
      for x-block:
        acc[XR, NR, 8] = 0                           # registers
        for ky, kx, c2: for xi in XR: for g in NR:   # unrolled
          acc[xi, g] += micro(broadcast P[n, y*s+ky, (x+xi)*s+kx, cv, 0:V], B[o+g, ky, kx, cv])
        requantize the XR x NR*8 tile into NCHW int8 (or NHWC, whole vectors)

Padding is materialized by the prologue, so the inner loop has no bounds
checks; strided and dilated convolutions only change which pixel a row
broadcasts. ``XR`` divides the output width where possible (a predicated tail
costs more than a narrower tile); ``NR`` = 2 vectors of 8 output channels.

The rule is lane-width generic (`CPUInt8Conv2d`): with weights ``[O/L, KH,
KW, C/V, L, V]`` the accumulator is ``acc[n, y, x, O/L, L]`` and the
`MicroKernels` table passed in picks the intrinsic by (dtypes, L) and the
tile sizes (isa/x86_vnni: vpdpbusd, L = 16 in zmm registers).
`CPUInt8Conv2dAVX2` is the rule with the AVX2 table.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target

from fxpress.backends.tvm.kernels.base import (
    ACC_SCOPE,
    attach_epilogue,
    is_multiply_accumulate,
    parallel_if_worth_it,
    work,
)
from fxpress.backends.tvm.kernels.int8_avx2 import MicroKernelRule, MicroKernels, divides


def _is_conv(kernels: MicroKernels) -> Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV], bool]:
    """``acc[n, y, x, o/L, o%L] += P[n, .., .., c/V, k] * B[o/L, ky, kx, c/V, o%L, k]`` (a micro-kernel of `kernels`)."""

    def accept(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
        stmt = sch.get(block)
        kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in stmt.iter_vars)
        return (
            is_multiply_accumulate(stmt, kinds)
            and kinds.rstrip("R").count("R") == 0
            and stmt.writes[0].source.dtype == "int32"
            and len(stmt.writes[0].source.shape) == 5
            and kernels.intrinsic(stmt) is not None
            and sorted(len(r.source.shape) for r in stmt.reads) == [5, 6]
        )

    return accept


def _roles(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> dict[str, s_tir.schedule.LoopRV | None]:
    """The block's loops by role; unit extents were normalized away (their role maps to None)."""
    stmt = sch.get(block)
    ivars = [iv.var for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    if len(loops) != len(ivars):
        raise ValueError("loops and block iterators do not correspond")
    weight = next(r for r in stmt.reads if len(r.source.shape) == 6)

    def loop_of(region: list, dim: int) -> s_tir.schedule.LoopRV | None:
        index = region[dim].min
        return loops[ivars.index(index)] if isinstance(index, tirx.Var) and index in ivars else None

    out = stmt.writes[0].region
    names = {"n": (out, 0), "y": (out, 1), "x": (out, 2), "g": (out, 3), "lane": (out, 4)}
    names |= {"ky": (weight.region, 1), "kx": (weight.region, 2), "c2": (weight.region, 3), "kk": (weight.region, 5)}
    return {role: loop_of(region, dim) for role, (region, dim) in names.items()}


def _vector_epilogue(sch: s_tir.Schedule, moved: list[s_tir.schedule.SBlockRV]) -> None:
    """A channels-last epilogue as whole vectors: its element-wise chain inlined, its channel loops vectorized.

    Only when the last block's innermost loop runs over whole 8-channel
    vectors (NHWC out: te_conv's `channels_last`); an NCHW tile's innermost
    loop is its few output columns, left to LLVM. The ``add_bias`` stage stays
    stored (see te_requant.add_bias_panels); so does a block TVM cannot inline
    (a function output). Measured: the stem conv 22 %, a 56x56 one 15 % faster
    than with the NCHW epilogue.
    """
    if not moved:
        return
    extent = get_extent(sch, sch.get_loops(moved[-1])[-1])
    if not isinstance(extent, int) or extent % 8:
        return
    kept = []
    for block in moved[:-1]:
        if sch.get(block).name_hint == "add_bias":
            kept.append(block)
            continue
        try:
            sch.compute_inline(block)
        except Exception:
            kept.append(block)
    for block in [*kept, moved[-1]]:
        inner = sch.get_loops(block)[-1]
        lanes = get_extent(sch, inner)
        if isinstance(lanes, int) and lanes % 8 == 0:
            sch.vectorize(inner)


class CPUInt8Conv2d(MicroKernelRule):
    """Tensorized direct conv2d for `quantized_conv2d`, with the micro-kernels of one ISA (see module docstring).

    `micro_kernels`: `AVX2` (vpmaddubsw / vpmaddwd, 8 lanes) by default, or
    isa/x86_vnni's tables (vpdpbusd, 8 or 16 lanes).
    """

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        kernels = self.micro_kernels
        kernel = self.find(func, target, _is_conv)
        if kernel is None:
            return None
        sch, main = kernel.sch, kernel.main
        intrin = kernels.intrinsic(sch.get(main))
        macs = work(sch, main)
        loop = _roles(sch, main)
        reduction = [loop[r] for r in ("ky", "kx", "c2") if loop[r] is not None]
        if loop["lane"] is None or loop["kk"] is None or not reduction:
            return None
        xo = xi = go = gi = None
        xr = 1
        if loop["x"] is not None:
            width = get_extent(sch, loop["x"])
            xr = next((r for r in kernels.conv_columns if isinstance(width, int) and width % r == 0), 1)
            xo, xi = sch.split(loop["x"], factors=[None, xr])
        if loop["g"] is not None:
            groups = get_extent(sch, loop["g"])
            fitting = (v for v in kernels.conv_vectors if v == 1 or (divides(v, groups) and kernels.fits(xr, v)))
            go, gi = sch.split(loop["g"], factors=[None, next(fitting, 1)])
        outer_loops = [lp for lp in (loop["n"], go, loop["y"]) if lp is not None]
        order = [*outer_loops, xo, *reduction, xi, gi, loop["lane"], loop["kk"]]
        sch.reorder(*[lp for lp in order if lp is not None])
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0] if outer_loops else None
        tile = xo if xo is not None else outer
        if tile is None:
            return None
        if outer is not None:
            parallel_if_worth_it(sch, outer, macs)
        acc = sch.cache_write(main, 0, ACC_SCOPE)
        sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
        _vector_epilogue(sch, attach_epilogue(sch, [main, acc], kernel.after, tile))
        for block in kernel.before:  # a prologue fused in: inlined into the kernel
            sch.compute_inline(block)
        sch.decompose_reduction(main, reduction[0])
        sch.tensorize(loop["lane"], intrin)
        for lp in (xi, gi):
            if lp is not None:
                sch.unroll(lp)
        return sch


class CPUInt8Conv2dAVX2(CPUInt8Conv2d):
    """`CPUInt8Conv2d` with the AVX2 micro-kernels (vpmaddubsw / vpmaddwd)."""
