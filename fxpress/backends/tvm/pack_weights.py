"""Import-time rewrite: matmuls and convolutions read panel-packed constant weights.

    matmul(x, W[K, N])  ->  packed_matmul(x, layout_transform(W, (k, n) -> (n // P, k, n % P)))
    conv2d(x, W[O, I, KH, KW]) -> packed_conv2d(x, layout_transform(W, (o, ...) -> (o // P, ..., o % P)))

Runs on the imported module before ``LiftTransformParams``; since ``W`` is
computed from parameters alone (often ``permute_dims`` of a linear weight),
the whole ``layout_transform`` is lifted into ``main_transform_params`` and
runs once at compile time: the artifact stores the packed ``[N/P, K, P]``
panels. ``P`` is the width of the matmul rule's register tile (NR*VL, 16 on
AVX2, 48 on AVX-512), so the micro-kernel reads each ``k`` row of its panel as
contiguous vectors instead of strided rows of ``W``. ``N`` not a multiple of
``P`` is padded with zeros. Only float32 matmuls whose right operand depends on
no model input are rewritten, and NCHW/OIHW float32 convolutions with
groups=1 (the packed conv vectorizes over output channels, which is what the
7x7 and 14x14 stages of a CNN need; depthwise and grouped convs keep the
NCHW direct schedule); everything else is left as it is.
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


def _packed_conv2d(
    x: te.Tensor,
    wp: te.Tensor,
    out_channels: int,
    strides: tuple[int, int],
    padding: tuple[int, ...],
    dilation: tuple[int, int],
) -> te.Tensor:
    """NCHW conv2d reading OIHW weights packed as [O/P, I, KH, KW, P]."""
    n, c, h, w = x.shape
    _, _, kh, kw, panel = (int(d) for d in wp.shape)
    top, left, bottom, right = padding
    sh, sw = strides
    dh, dw = dilation
    out_h = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    pad = te.compute(
        (n, c, h + top + bottom, w + left + right),
        lambda b, ci, yy, xx: tvm.tirx.if_then_else(
            tvm.tirx.all(yy >= top, yy < h + top, xx >= left, xx < w + left),
            x[b, ci, yy - top, xx - left],
            tvm.tirx.const(0.0, x.dtype),
        ),
        name="pad_temp",
    )
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    return te.compute(
        (n, out_channels, out_h, out_w),
        lambda b, f, yy, xx: te.sum(
            pad[b, rc, yy * sh + ry * dh, xx * sw + rx * dw] * wp[f // panel, rc, ry, rx, f % panel], axis=[rc, ry, rx]
        ),
        name="conv2d_packed",
    )


def _conv_packable(call: Call, constant: set[relax.Var]) -> bool:
    if getattr(call.op, "name", "") != "relax.nn.conv2d":
        return False
    x, w = call.args
    a = call.attrs
    if not (isinstance(w, relax.Var) and w in constant) or (isinstance(x, relax.Var) and x in constant):
        return False
    if int(a.groups) != 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW":
        return False
    if x.ty.dtype != "float32" or w.ty.dtype != "float32" or str(a.out_dtype) not in ("float32", ""):
        return False
    return all(isinstance(d, tvm.tirx.IntImm) for d in (*x.ty.shape.values, *w.ty.shape.values))


@expr_functor.mutator
class _Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, panel: int, constant: set[relax.Var]) -> None:
        super().__init__(mod)
        self.panel = panel
        self.constant = constant
        self.packed = 0

    def visit_call_(self, call: Call) -> Expr:
        if _conv_packable(call, self.constant):
            return self._conv(call, super().visit_call_(call))
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

    def _conv(self, call: Call, new: Call) -> Expr:
        x, w = new.args
        a = call.attrs
        out_channels = int(call.args[1].ty.shape.values[0])
        panel = self.panel
        wp = self.builder_.emit(
            relax.op.layout_transform(w, lambda o, i, h, k: (o // panel, i, h, k, o % panel), pad_value=0.0)
        )
        self.packed += 1
        ints = lambda v: tuple(int(i) for i in v)  # noqa: E731
        return self.builder_.call_te(
            _packed_conv2d,
            x,
            wp,
            out_channels,
            ints(a.strides),
            ints(a.padding),
            ints(a.dilation),
            primfunc_name_hint="conv2d_packed",
        )


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
