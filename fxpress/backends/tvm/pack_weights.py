"""Import-time rewrite: matmuls with constant weights read panel-packed weights.

    matmul(x, W[K, N])  ->  packed_matmul(x, layout_transform(W, (k, n) -> (n // P, k, n % P)))

Runs on the imported module before ``LiftTransformParams``; since ``W`` is
computed from parameters alone (often ``permute_dims`` of a linear weight),
the whole ``layout_transform`` is lifted into ``main_transform_params`` and
runs once at compile time: the artifact stores the packed ``[N/P, K, P]``
panels. ``P`` is the width of the matmul rule's register tile (NR*VL, 16 on
AVX2, 48 on AVX-512), so the micro-kernel reads each ``k`` row of its panel as
contiguous vectors instead of strided rows of ``W``. ``N`` not a multiple of
``P`` is padded with zeros. Only float32 matmuls whose right operand depends on
no model input are rewritten; everything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax import Call, Expr, PyExprMutator, expr_functor

from fxpress.backends.tvm.kernels.matmul import register_tile


def _packed_matmul(x: te.Tensor, wp: te.Tensor, n: int) -> te.Tensor:
    panel, kdim = int(wp.shape[2]), x.shape[-1]
    k = te.reduce_axis((0, kdim), name="k")
    lead = list(x.shape[:-1])

    def body(*idx: tvm.tirx.Var) -> tvm.tirx.PrimExpr:
        *rest, j = idx
        return te.sum(x[(*rest, k)] * wp[j // panel, k, j % panel], axis=k)

    return te.compute([*lead, n], body, name="matmul_packed")


_CONST = type(relax.const(0.0))  # relax.Constant's class (renamed in TVM 0.27)


def _constant_vars(func: relax.Function, num_input: int) -> set[relax.Var]:
    """Variables of `func` computed from its parameters (after the inputs) alone."""
    constant: set[relax.Var] = set(func.params[num_input:])

    def is_constant(e: Expr) -> bool:
        if isinstance(e, relax.Var):
            return e in constant
        if isinstance(e, relax.ShapeExpr | _CONST):
            return True
        if isinstance(e, relax.Tuple):
            return all(is_constant(f) for f in e.fields)
        if isinstance(e, relax.TupleGetItem):
            return is_constant(e.tuple_value)
        if isinstance(e, Call):
            return all(is_constant(a) for a in e.args)
        return False

    body = func.body
    for block in body.blocks if isinstance(body, relax.SeqExpr) else []:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and is_constant(b.value):
                constant.add(b.var)
    return constant


def _packable(call: Call, constant: set[relax.Var]) -> bool:
    if getattr(call.op, "name", "") != "relax.matmul" or len(call.args) != 2:
        return False
    x, w = call.args
    if not (isinstance(w, relax.Var) and w in constant) or (isinstance(x, relax.Var) and x in constant):
        return False
    wt, xt = w.ty, x.ty
    if getattr(wt, "ndim", 0) != 2 or getattr(xt, "ndim", 0) < 2 or wt.dtype != "float32" or xt.dtype != "float32":
        return False
    return wt.shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in wt.shape.values)


@expr_functor.mutator
class _Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, panel: int, constant: set[relax.Var]) -> None:
        super().__init__(mod)
        self.panel = panel
        self.constant = constant
        self.packed = 0

    def visit_call_(self, call: Call) -> Expr:
        target = _packable(call, self.constant)
        new = super().visit_call_(call)
        if not target:
            return new
        x, w = new.args
        n = int(call.args[1].ty.shape.values[1])
        panel = self.panel
        wp = self.builder_.emit(relax.op.layout_transform(w, lambda k, j: (j // panel, k, j % panel), pad_value=0.0))
        self.packed += 1
        return self.builder_.call_te(_packed_matmul, x, wp, n, primfunc_name_hint="matmul_packed")


def pack_weights(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Rewrite ``main``'s constant-weight matmuls to packed panels (see module doc)."""
    main = mod["main"]
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(main.params)
    _, nr, lanes = register_tile(target)
    packer = _Packer(mod, nr * lanes, _constant_vars(main, num_input))
    new_main = packer.visit_expr(main)
    if not packer.packed:
        return mod
    packer.builder_.update_func(mod.get_global_var("main"), new_main)
    return packer.builder_.get()
