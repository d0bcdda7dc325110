"""Import-time rewrite: matmuls and convolutions read panel-packed constant weights.

    matmul(x, W[K, N])  ->  packed_matmul(x, layout_transform(W, (k, n) -> (n // P, k, n % P)))
    conv2d(x, W[O, I, KH, KW]) -> packed_conv2d(x, layout_transform(W, (o, ...) -> (o // P, ..., o % P)))

Runs on the imported module before ``LiftTransformParams``; since ``W`` is
computed from parameters alone (often ``permute_dims`` of a linear weight),
the whole ``layout_transform`` is lifted into ``main_transform_params`` and
runs once at compile time: the artifact stores the packed ``[N/P, K, P]``
panels. ``P`` is the width of the rules' register tile, so the micro-kernel
reads each ``k`` row of its panel as contiguous vectors instead of strided
rows of ``W``: 16 on AVX2 (NR*VL); on AVX-512 per layer, NR vectors of 16
that divide the layer's N (`matmul_panel`) or output channels (`conv_panel`,
8-lane vectors for 24 or 40 channels). ``N`` not a multiple of ``P`` is
padded with zeros; on AVX-512 the kernel then computes the padded panel and
slices it (a tail vector would run the kernel scalar). Only float32 matmuls
whose right operand depends on no model input are rewritten, and NCHW/OIHW
float32 convolutions with groups=1 (the packed conv vectorizes over output
channels, which is what the 7x7 and 14x14 stages of a CNN need). Depthwise
convs keep the direct NCHW schedule on AVX2; on AVX-512 static ones become
te_depthwise's wide-row conv (vectors along flat rows: every width and
stride a whole vector). Everything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax import Call, Expr, PyExprMutator, expr_functor

from fxpress.backends.tvm.kernels.base import vector_lanes
from fxpress.backends.tvm.kernels.conv2d import conv_panel
from fxpress.backends.tvm.kernels.matmul import PACKED, matmul_panel
from fxpress.backends.tvm.te_depthwise import te_depthwise_conv2d_wide


def _packed_matmul(x: te.Tensor, wp: te.Tensor, n: int, padded: bool = False) -> te.Tensor:
    """``x @ W`` reading W's panels; `padded`: over all ``N/P * P`` columns (no tail in the kernel), then sliced."""
    panel, kdim = int(wp.shape[2]), x.shape[-1]
    k = te.reduce_axis((0, kdim), name="k")
    lead = list(x.shape[:-1])

    def body(*idx: tvm.tirx.Var) -> tvm.tirx.PrimExpr:
        *rest, j = idx
        return te.sum(x[(*rest, k)] * wp[j // panel, k, j % panel], axis=k)

    if not padded:
        return te.compute([*lead, n], body, name=PACKED)
    full = te.compute([*lead, int(wp.shape[0]) * panel], body, name=PACKED)
    return te.compute([*lead, n], lambda *idx: full[idx], name=f"{PACKED}_columns")


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
    wide: bool = False,
) -> te.Tensor:
    """NCHW conv2d reading OIHW weights packed as [O/P, I, KH, KW, P].

    `wide` (AVX-512 schedules): no padding stage when nothing is padded (a 1x1
    conv reads its input directly), and channels that P does not divide are
    computed over the zero-padded panel, then sliced, so the kernel's vectors
    carry no predicate.
    """
    n, c, h, w = x.shape
    blocks, _, kh, kw, panel = (int(d) for d in wp.shape)
    top, left, bottom, right = padding
    sh, sw = strides
    dh, dw = dilation
    out_h = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    if wide and not any(padding):
        pad = x
    else:
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
    padded = wide and out_channels % panel != 0
    conv = te.compute(
        (n, blocks * panel if padded else out_channels, out_h, out_w),
        lambda b, f, yy, xx: te.sum(
            pad[b, rc, yy * sh + ry * dh, xx * sw + rx * dw] * wp[f // panel, rc, ry, rx, f % panel], axis=[rc, ry, rx]
        ),
        name="conv2d_packed",
    )
    if not padded:
        return conv
    return te.compute((n, out_channels, out_h, out_w), lambda *i: conv[i], name="conv2d_packed_channels")


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


def _depthwise_wide_ok(call: Call) -> bool:
    """A static float32 NCHW depthwise conv (one channel a group, dilation 1, equal strides) for te_depthwise."""
    if getattr(call.op, "name", "") != "relax.nn.conv2d":
        return False
    x, w = call.args
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW":
        return False
    if x.ty.dtype != "float32" or w.ty.dtype != "float32" or str(a.out_dtype) not in ("float32", ""):
        return False
    if not all(isinstance(d, tvm.tirx.IntImm) for d in (*x.ty.shape.values, *w.ty.shape.values)):
        return False
    channels = int(x.ty.shape.values[1])
    out_channels, per_group = (int(d) for d in w.ty.shape.values[:2])
    strides, dilation = [int(v) for v in a.strides], [int(v) for v in a.dilation]
    return (
        int(a.groups) == channels == out_channels
        and per_group == 1
        and dilation == [1, 1]
        and strides[0] == strides[1]
        and strides[0] in (1, 2)
    )


@expr_functor.mutator
class _Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, constant: set[relax.Var]) -> None:
        super().__init__(mod)
        self.target = target
        self.lanes = vector_lanes(target)
        self.wide_depthwise = self.lanes >= 16  # AVX-512; the AVX2 path keeps the direct NCHW schedule
        self.constant = constant
        self.packed = 0

    def visit_call_(self, call: Call) -> Expr:
        if _conv_packable(call, self.constant):
            return self._conv(call, super().visit_call_(call))
        if self.wide_depthwise and _depthwise_wide_ok(call):
            return self._depthwise(call, super().visit_call_(call))
        target = _packable(call, self.constant)
        new = super().visit_call_(call)
        if not target:
            return new
        x, w = new.args
        n = int(call.args[1].ty.shape.values[1])
        panel = matmul_panel(n, self.target)
        wp = self.builder_.emit(relax.op.layout_transform(w, lambda k, j: (j // panel, k, j % panel), pad_value=0.0))
        self.packed += 1
        padded = self.lanes >= 16 and n % panel != 0  # AVX-512: a tail would run the whole kernel scalar
        return self.builder_.call_te(_packed_matmul, x, wp, n, padded, primfunc_name_hint="matmul_packed")

    def _depthwise(self, call: Call, new: Call) -> Expr:
        x, w = new.args
        a = call.attrs
        self.packed += 1
        return self.builder_.call_te(
            te_depthwise_conv2d_wide,
            x,
            w,
            int(a.strides[0]),
            tuple(int(i) for i in a.padding),
            self.lanes,
            primfunc_name_hint="depthwise_conv2d_wide",
        )

    def _conv(self, call: Call, new: Call) -> Expr:
        x, w = new.args
        a = call.attrs
        out_channels = int(call.args[1].ty.shape.values[0])
        panel = conv_panel(out_channels, self.target, int(call.ty.shape.values[3]))
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
            self.lanes >= 16,
            primfunc_name_hint="conv2d_packed",
        )


def pack_weights(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Rewrite ``main``'s constant-weight matmuls to packed panels (see module doc)."""
    main = mod["main"]
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(main.params)
    packer = _Packer(mod, target, _constant_vars(main, num_input))
    new_main = packer.visit_expr(main)
    if not packer.packed:
        return mod
    packer.builder_.update_func(mod.get_global_var("main"), new_main)
    return packer.builder_.get()
