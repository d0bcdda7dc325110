"""The int8 block-sparse linear kernel: u8 x s8 quads of kept columns, int32 accumulators, requantization fused.

    acc[m, n] = sum_k (x[m, k] - x_zp) * W[n, k],   W int8 in R x 1 column blocks, most of them zero,
    y = requantize(acc + bias)  (or float32(acc + bias) * scale)

Weights are block-ELL (sparse_ops.py) with C = 1 and every block row padded
to L blocks, L a multiple of 4, so the kept columns of a block row come in
quads; each quad's weights are one ``[R, 4]`` int8 tile. The kernel works a
block row at a time (the parallel loop):

1. ``xt[k, m] = uint8(x[m, k] + 128)``: the shifted activations, transposed
   once per call (the u8s8 form: the shift is undone through the bias,
   ``bias - (128 + x_zp) * colsum(W)``, which the converter folds at compile
   time);
2. ``P[lq, m] = xt[c0, m] | xt[c1, m] << 8 | xt[c2, m] << 16 | xt[c3, m] << 24``
   (int32) for the row's quads ``c0..c3``: the four activations one quad of
   weights multiplies, packed into the 32 bits a ``vpdpbusd`` lane reads, in
   16-wide vectors over m (contiguous loads of ``xt`` rows, shifts and ors:
   no byte gathers); computed under the block row, so it stays in L1;
3. an ``MR x R`` register tile of int32 accumulators: per quad, MR broadcasts
   of ``P`` against the quad's ``[R, 4]`` weights. The ISA names the tensor
   intrinsic of that step (isa/x86_vnni/sparse.py: ``vpdpbusd``, 64
   multiply-adds an instruction); an ISA without one keeps such layers
   dense (block_sparse.py asks it);
4. the requantization (te_requant.requantize, the dense kernels' arithmetic)
   or the float scaling, fused under the tile.

As in kernels/bsr.py, each block row's quad loops (the gather's and the
reduction's) are cut to ``ceil(counts[i] / 4)`` after scheduling, so padding
blocks cost no work.
`bsr_int8_func` returns the scheduled PrimFunc (marked scheduled and opaque).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tvm import s_tir, te, tirx
from tvm.script import from_source

from fxpress.backends.tvm.kernels.base import ACC_SCOPE, PARALLEL_MIN_MACS, attach_epilogue
from fxpress.backends.tvm.te_requant import requantize, te_scaled

log = logging.getLogger(__name__)

OPAQUE = 8  # relax OpPatternKind.kOpaque: never fused with neighbours
QUAD = 4  # kept columns per vpdpbusd lane
QUAD_LOOP = "fxpress_bsr_quads"  # loop annotation: a loop over a block row's quads, cut to its own count


def quad_product(packed: tirx.PrimExpr, q: tirx.PrimExpr, weight: tirx.PrimExpr) -> tirx.PrimExpr:
    """``uint8 byte q of packed`` times int8 ``weight``, in int32: one of a quad's four products.

    The micro-kernel's description (isa/x86_vnni/sparse.py) is written with
    this same expression, so that the kernel's block matches it.
    """
    byte = tirx.bitwise_and(tirx.shift_right(packed, q * tirx.const(8, "int32")), tirx.const(255, "int32"))
    return byte * weight.astype("int32")


def _rows_per_tile(rows: int, vectors: int, lanes: int) -> int:
    """MR: the rows of a register tile, the largest divisor of `rows` whose accumulators stay under 1 KB.

    TVM 0.27 keeps a local buffer below 1 KB on the stack, where LLVM turns it
    into registers; from 1 KB on it is a workspace allocated per tile, zeroed
    with a ``memset`` and read back from memory (16 rows x 16 lanes measured
    30 % slower than 8 rows x 16 on Linear(768, 3072) at batch 128).
    """
    best = max((1024 // (4 * lanes) - 1) // vectors, 1)
    return next((mr for mr in range(best, 0, -1) if rows % mr == 0), 1)


def bsr_int8_func(
    rows: int,
    k: int,
    nb: int,
    r: int,
    width: int,
    requant: dict[str, Any],
    intrinsic: str,
    lanes: int,
) -> tirx.PrimFunc:
    """The scheduled kernel ``(x, data, cols, counts, bias, *requant params) -> y[rows, nb * r]``.

    `x` int8 ``[rows, k]``; `data` int8 ``[nb, width / 4, r, 4]``; `cols`
    int32 ``[nb, width]``; `counts` int32 ``[nb]`` (blocks per row); `bias`
    int32 ``[n]`` (narrow) or int64, already shifted for the u8 activations.
    `requant`: ``{"narrow": bool, "out_zero_point": int, "float": bool}``;
    the requant parameters are int32 ``multiplier``/``shift`` ``[n]``, or
    float32 ``scale`` ``[n]`` when ``float``. `intrinsic`: a registered
    tensor intrinsic for one quad step over `lanes` int32 lanes (the ISA's).
    """
    if width % QUAD or r % lanes:
        raise ValueError(f"block-ELL width {width} must be a multiple of 4 and R = {r} of {lanes} lanes")
    n, lq4 = nb * r, width // QUAD
    narrow, as_float = bool(requant.get("narrow")), bool(requant.get("float"))
    x = te.placeholder((rows, k), "int8", name="x")
    data = te.placeholder((nb, lq4, r, QUAD), "int8", name="data")
    cols = te.placeholder((nb, width), "int32", name="cols")
    counts = te.placeholder((nb,), "int32", name="counts")
    bias = te.placeholder((n,), "int32" if narrow else "int64", name="bias")
    xt = te.compute((k, rows), lambda kk, mm: (x[mm, kk].astype("int16") + 128).astype("uint8"), name="xt")

    def pack(ii: tirx.Var, g: tirx.Var, mm: tirx.Var) -> tirx.PrimExpr:
        out = xt[cols[ii, g * QUAD], mm].astype("int32")
        for q in range(1, QUAD):
            out = tirx.bitwise_or(out, tirx.shift_left(xt[cols[ii, g * QUAD + q], mm].astype("int32"), q * 8))
        return out

    packed = te.compute((nb, lq4, rows), pack, name="packed")
    lq = te.reduce_axis((0, lq4), name="lq")
    qi = te.reduce_axis((0, QUAD), name="q")
    acc = te.compute(
        (rows, nb, r),
        lambda m, i, b: te.sum(quad_product(packed[i, lq, m], qi, data[i, lq, b, qi]), axis=[lq, qi]),
        name="bsr_acc",
    )
    read = lambda rest, j: acc[rest[0], j // r, j % r]  # noqa: E731
    if as_float:
        scale = te.placeholder((n,), "float32", name="scale")
        if narrow:  # acc + bias fits int32 (the converter proved it): one int32 add, then vcvtdq2ps
            y = te_scaled([rows, n], lambda m, j: read([m], j) + bias[j], scale)
        else:
            y = te_scaled([rows, n], lambda m, j: read([m], j).astype("int64") + bias[j].astype("int64"), scale)
        params = [scale]
    else:
        mult = te.placeholder((n,), "int32", name="multiplier")
        shift = te.placeholder((n,), "int32", name="shift")
        zp = int(requant.get("out_zero_point", 0))
        y = requantize(bias, mult, shift, zp, [rows], n, read, narrow=narrow)
        params = [mult, shift]
    func = te.create_prim_func([x, data, cols, counts, bias, *params, y])
    return _schedule(func, rows, nb, r, width, intrinsic, lanes)


def _schedule(func: tirx.PrimFunc, rows: int, nb: int, r: int, width: int, intrinsic: str, lanes: int) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    main = sch.get_sblock("bsr_acc")
    epilogue = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint not in
                ("xt", "packed", "bsr_acc")]  # fmt: skip
    m, i, b, lo, qo = sch.get_loops(main)
    mr = _rows_per_tile(rows, r // lanes, lanes)
    mo, mi = sch.split(m, factors=[None, mr])
    bo, bi = sch.split(b, factors=[None, lanes])
    sch.reorder(i, mo, lo, mi, bo, bi, qo)
    if rows * nb * width * r >= PARALLEL_MIN_MACS:
        sch.parallel(i)
    # the row's packed activations, under the block row: [width / 4, rows] int32, vectors over m
    packed = sch.get_sblock("packed")
    sch.compute_at(packed, i, preserve_unit_loops=True)
    *_, pq, pm = sch.get_loops(packed)
    sch.annotate(pq, QUAD_LOOP, 1)  # marks the gather's quad loop for `_variable_length`
    vec = next((v for v in (16, 8, 4) if rows % v == 0), 1)
    if vec > 1:
        sch.vectorize(sch.split(pm, factors=[None, vec])[1])
    xt = sch.get_sblock("xt")
    _, xm = sch.get_loops(xt)
    if vec > 1:
        sch.vectorize(sch.split(xm, factors=[None, vec])[1])
    local = sch.cache_write(main, 0, ACC_SCOPE)
    sch.reverse_compute_at(local, mo, preserve_unit_loops=True)
    for block in attach_epilogue(sch, [main, local], epilogue, mo):
        loops = sch.get_loops(block)
        inner = sch.split(loops[-1], factors=[None, lanes])[1]
        sch.vectorize(inner)
    sch.compute_inline(local)
    sch.decompose_reduction(main, lo)
    sch.tensorize(bi, intrinsic)
    sch.unroll(mi)
    return (
        _variable_length(sch.mod["main"], width // QUAD)
        .with_attr("tir.is_scheduled", True)
        .with_attr("op_pattern", OPAQUE)
    )


def _variable_length(func: tirx.PrimFunc, quads: int) -> tirx.PrimFunc:
    """Stop each block row's loops over quads (the gather's, marked `QUAD_LOOP`, and the reduction's ``lq``)
    at ``ceil(counts[i] / 4)``; done on the printed TensorIR, as in kernels/bsr.py.

    If either loop is not found as expected, the padded kernel is kept: still
    exact (padding reads column 0 against zero weights), only slower.
    """
    text = func.script()
    reduction = rf"for lq in range\({quads}\):"
    gather = rf'for (\w+) in T.serial\({quads}, annotations=\{{"{QUAD_LOOP}": 1\}}\):'
    if len(re.findall(reduction, text)) != 1 or len(re.findall(gather, text)) != 1:
        log.warning("int8 block-sparse kernel: the quad loops were not found; running the padded width")
        return func
    text = re.sub(reduction, "for lq in range((counts[i] + 3) // 4):", text)
    return from_source(re.sub(gather, r"for \1 in range((counts[i] + 3) // 4):", text))
