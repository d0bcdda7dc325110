"""TE of a softmax over the last axis fused with the int8 quantize that follows it.

On int8 attention the softmax's probabilities go straight into a quantize.
Apart, the pair divides twice per element (``exp / sum``, then ``/ scale``);
here each row's ``1 / (sum * scale)`` is one value and every element is
multiplied by it, so the quantize costs a multiply and the row a divide.
``exp`` is TOPI's ``fast_exp`` like the float softmax (fast_math.py), and the
schedule is the row rule's (kernels/rows.py): max, exp and sum per row, then
the quantized row. The probabilities before rounding differ from the float
reference's ``softmax / scale`` only in the last float32 bits, as
``fast_exp`` already does. The rounding is ``nearbyint`` written with
``floor`` and a select (te_requant.round_half_even, bit-identical): TVM does not vectorize
``tirx.nearbyint``, and with it the quantize ran scalar (LLVM then vectorized
across the row's 16-lane chunks with gathers and one byte store per element),
0.25 -> 0.15 ms per all-MiniLM-L6-v2 layer at batch 1, one thread.
"""

from __future__ import annotations

from tvm import te, tirx, topi

from fxpress.backends.tvm.te_requant import round_half_even


def te_softmax_quantize(x: te.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> te.Tensor:
    """int8 ``clamp(round(softmax(x, -1) / scale) + zero_point, qmin, qmax)`` of float32 `x` (see module doc)."""
    *rows, length = x.shape
    k1, k2 = te.reduce_axis((0, length), name="k"), te.reduce_axis((0, length), name="k")
    row_max = te.compute(rows, lambda *r: te.max(x[(*r, k1)], axis=k1), name="softmax_max")
    delta = te.compute(x.shape, lambda *i: x[i] - row_max[i[:-1]], name="softmax_delta")
    exp = topi.fast_exp(delta)
    row_sum = te.compute(rows, lambda *r: te.sum(exp[(*r, k2)], axis=k2), name="softmax_sum")
    one, step = tirx.const(1.0, "float32"), tirx.const(scale, "float32")

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        q = round_half_even(exp[i] * (one / (row_sum[i[:-1]] * step))).astype("int32") + zero_point
        return tirx.max(tirx.min(q, qmax), qmin).astype("int8")

    return te.compute(x.shape, body, name="softmax_quantize")
