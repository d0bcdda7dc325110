"""Block-sparse linear kernels for CPUs, written for fxpress (TVM 0.27 has no sparse ops).

    y[m, n] = bias[n] + sum_k x[m, k] * W[n, k],   W in R x C blocks, most of them zero.

The weight's nonzero blocks are stored in *block-ELL* form: every block row
keeps the same number L of blocks (the largest count of any row; shorter rows
are padded with zero blocks pointing at column 0), so the kernel is a regular
reduction with an indirect column, which TensorIR schedules like a dense GEMM:

    cols[nb, L]          int32   the column (in units of C) of each kept block
    counts[nb]           int32   how many of a row's L blocks are real
    data[nb, L, C, R]    fp32    each block transposed: the R outputs of one
                                 input column are contiguous (one vector load)

The schedule is the dense micro-kernel's: an ``MR x R`` tile of outputs in
registers (R a multiple of the vector width), and for each kept block MR
broadcasts of x against the block's R weights (``MR * R / lanes`` FMAs). Row
tiles of x are the outer (parallel) loop, so a tile's rows stay in cache while
the block rows stream by; the bias is added as the tile is written.

The padding costs nothing: after scheduling, each block row's reduction loop
is cut to ``counts[i]`` (a data-dependent extent TE cannot express, set on the
scheduled TensorIR), so the kernel does the work of the real blocks only, as
a CSR-style BSR kernel would, while keeping the regular layout's schedule.

`bsr_linear_func` returns the scheduled PrimFunc (marked ``tir.is_scheduled``
and opaque, so fusion and the dlight rules leave it alone).
"""

from __future__ import annotations

import logging
import re

from tvm import s_tir, te, tirx
from tvm.script import from_source

from fxpress.backends.tvm.kernels.base import ACC_SCOPE, PARALLEL_MIN_MACS, attach_epilogue

log = logging.getLogger(__name__)

OPAQUE = 8  # relax OpPatternKind.kOpaque: never fused with neighbours


def _rows_per_tile(rows: int | tirx.PrimExpr, r: int, lanes: int) -> int:
    """MR: rows of x per register tile, so MR * R / lanes accumulators fit in 12 of 16 registers.

    A static row count gets the largest MR up to that which divides it (no
    tail); a dynamic one gets the largest, and its last tile is guarded.
    """
    vectors = max(r // lanes, 1)
    best = max(12 // vectors, 1)
    if not isinstance(rows, int):
        return best
    return next((mr for mr in range(best, 1, -1) if rows % mr == 0), min(best, rows))


def bsr_linear_func(rows: int | None, k: int, n: int, block: tuple[int, int], width: int, lanes: int) -> tirx.PrimFunc:
    """The scheduled kernel for x[rows, k] (rows None: dynamic) and a [n, k] weight.

    The weight is in `block` (R, C) blocks, `width` of them kept per block row;
    the output is ``[rows, n / R, R]`` (a free reshape from ``[rows, n]``).
    """
    r, c = block
    if n % r or k % c:
        raise ValueError(f"a {r}x{c} block does not divide the [{n}, {k}] weight")
    nb, length = n // r, max(width, 1)
    if not isinstance(rows, int):  # its own variable, bound by x's shape when called
        rows = tirx.Var("rows", "int64")
    x = te.placeholder((rows, k), "float32", name="x")
    data = te.placeholder((nb, length, c, r), "float32", name="data")
    cols = te.placeholder((nb, length), "int32", name="cols")
    counts = te.placeholder((nb,), "int32", name="counts")
    bias = te.placeholder((n,), "float32", name="bias")
    li = te.reduce_axis((0, length), name="l")
    ci = te.reduce_axis((0, c), name="c")
    acc = te.compute(
        (rows, nb, r),
        lambda m, i, b: te.sum(x[m, cols[i, li] * c + ci] * data[i, li, ci, b], axis=[li, ci]),
        name="bsr_acc",
    )
    y = te.compute((rows, nb, r), lambda m, i, b: acc[m, i, b] + bias[i * r + b], name="bsr_bias")
    func = te.create_prim_func([x, data, cols, counts, bias, y])

    sch = s_tir.Schedule(func)
    main = sch.get_sblock("bsr_acc")
    m, i, b, lo, co = sch.get_loops(main)
    mr = _rows_per_tile(rows, r, lanes)
    mo, mi = sch.split(m, factors=[None, mr])
    sch.reorder(mo, i, lo, co, mi, b)
    if not isinstance(rows, int) or (rows * nb * length * r * c >= PARALLEL_MIN_MACS and rows > mr):
        sch.parallel(mo)
    local = sch.cache_write(main, 0, ACC_SCOPE)
    sch.reverse_compute_at(local, i, preserve_unit_loops=True)
    for epilogue in attach_epilogue(sch, [main, local], [sch.get_sblock("bsr_bias")], i):
        sch.vectorize(sch.get_loops(epilogue)[-1])
    sch.compute_inline(local)  # the bias is added on the way out of the registers: no [rows, n] temporary
    sch.vectorize(b)
    sch.unroll(mi)
    sch.decompose_reduction(main, lo)
    func = _variable_length(sch.mod["main"], length, c)
    return func.with_attr("tir.is_scheduled", True).with_attr("op_pattern", OPAQUE)


def _variable_length(func: tirx.PrimFunc, length: int, c: int) -> tirx.PrimFunc:
    """Stop each block row's reduction at its own block count instead of the padded width.

    Done on the printed TensorIR (TVM 0.27's Python API has no statement
    mutator). If the loop is not found as expected, the padded kernel is kept:
    still exact (padding blocks are zero), only slower, and a warning says so.
    """
    text = func.script()
    pattern = rf"for l, c in T.grid\({length}, {c}\):"
    if len(re.findall(pattern, text)) != 1:
        log.warning("block-sparse kernel: the reduction loop was not found; running the padded block-ELL width")
        return func
    return from_source(re.sub(pattern, f"for l, c in T.grid(counts[i], {c}):", text))
