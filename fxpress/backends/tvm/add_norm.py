"""Lowering stage ``add-norm``: a residual add fused into the layer norm that reads it.

``layer_norm(a + b)`` is two kernels after fusion: TVM's FuseOps never fuses
an element-wise producer into a reduction, so the sum goes to memory and is
read back (on all-MiniLM-L6-v2 twelve times a run, each a parallel kernel of
its own). This Relax pass rewrites, before legalization, each float32
``nn.layer_norm`` whose input is an ``add`` used by nothing else into one
``call_te`` of ``layer_norm(add(a, b))``; the row rule (kernels/rows.py)
computes the sum per row beside the mean and variance. Adds that broadcast,
or whose sum is read elsewhere, stay as they are.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.relax import Call, Expr, PyExprMutator, expr_functor


def _same_shape(a: Expr, b: Expr) -> bool:
    sa, sb = getattr(a.ty, "shape", None), getattr(b.ty, "shape", None)
    if sa is None or sb is None:
        return False
    return [str(d) for d in sa.values] == [str(d) for d in sb.values]


def _users(func: relax.Function) -> dict[relax.Var, int]:
    """How many bindings of `func`'s dataflow blocks read each variable (0 for an output's)."""
    counts: dict[relax.Var, int] = {}
    for block in func.body.blocks:
        if isinstance(block, relax.DataflowBlock):
            for var, users in relax.analysis.udchain(block).items():
                counts[var] = counts.get(var, 0) + len(users)
    return counts


@expr_functor.mutator
class _AddNorm(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.users: dict[relax.Var, int] = {}

    def visit_call_(self, call: Call) -> Expr:
        call = super().visit_call_(call)
        if getattr(call.op, "name", "") != "relax.nn.layer_norm" or getattr(call.ty, "dtype", "") != "float32":
            return call
        x, gamma, beta = call.args
        source = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if not isinstance(source, Call) or getattr(source.op, "name", "") != "relax.add":
            return call
        a, b = source.args
        if self.users.get(x, 0) != 1 or not (_same_shape(a, x) and _same_shape(b, x)):
            return call
        axes, ndim = [int(v) for v in call.attrs.axes], len(x.ty.shape.values)
        if [v % ndim for v in axes] != [ndim - 1] or not (call.attrs.center and call.attrs.scale):
            return call
        eps = float(call.attrs.epsilon)
        return self.builder_.call_te(te_add_layer_norm, a, b, gamma, beta, eps, primfunc_name_hint="add_layer_norm")


def te_add_layer_norm(a: te.Tensor, b: te.Tensor, gamma: te.Tensor, beta: te.Tensor, eps: float) -> te.Tensor:
    """``layer_norm(a + b)`` over the last axis, the sum recomputed where read (no buffer for it).

    A buffer would be a row per parallel iteration: over 1 KB, TVM allocates
    such a buffer on the heap for every row.
    """
    *rows, length = a.shape
    n = tirx.Cast("float32", length)
    k1, k2 = te.reduce_axis((0, length), name="k"), te.reduce_axis((0, length), name="k")
    total = te.compute(rows, lambda *r: te.sum(a[(*r, k1)] + b[(*r, k1)], axis=k1), name="add_norm_sum")

    def centred(*i: tirx.Var) -> tirx.PrimExpr:
        return a[i] + b[i] - total[i[:-1]] / n

    var = te.compute(rows, lambda *r: te.sum(centred(*r, k2) * centred(*r, k2), axis=k2), name="add_norm_var")
    eps_ = tirx.const(eps, "float32")

    def body(*i: tirx.Var) -> tirx.PrimExpr:
        return centred(*i) * tirx.rsqrt(var[i[:-1]] / n + eps_) * gamma[i[-1]] + beta[i[-1]]

    return te.compute(a.shape, body, name="add_layer_norm")


@tvm.transform.module_pass(opt_level=0, name="FxpressAddNorm")
class AddNorm:
    """Fuse ``layer_norm(a + b)`` into one function where the sum is read only there (see module doc)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mutator = _AddNorm(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                mutator.users = _users(func)
                mutator.builder_.update_func(gv, mutator.visit_expr(func))  # the fused add: the dead-code stage
        return mutator.builder_.get()
