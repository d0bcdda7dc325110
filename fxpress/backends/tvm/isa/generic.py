"""The generic ISA: fxpress's target-free schedules and int8 lowering.

Every CPU ISA falls back to these; the ``x86-64`` preset (baseline x86-64,
SSE2 only) and the ``arm`` preset use them alone, and the CUDA preset uses
their int8 lowering with dlight's GPU rules.

int8 here is exact integer arithmetic in the float kernels' shapes: an int32
accumulation block (``(x - x_zp) * w``) that the generic matmul and conv
rules schedule like their float versions, weights in their panels
(``[N/P, K, P]`` for linears, ``[O/P, I, KH, KW, P]`` for groups=1 convs,
P = the fp32 register tile's width), the requantization fused as the
epilogue. Depthwise and grouped convs, and every conv of a target without
its own int8 kernels, take this form.
"""

from __future__ import annotations

from typing import Any

import tvm.s_tir.dlight as dl
from tvm import relax
from tvm.target import Target

from fxpress.backends.tvm.isa.base import ISA, Conv, Int8Lowering, Int8Weight, Requant
from fxpress.backends.tvm.kernels import (
    CPUConv2d,
    CPUConvStemPrologue,
    CPUInjective,
    CPUMatmul,
    CPURowReduction,
    CPUSeparablePool,
)
from fxpress.backends.tvm.kernels.base import Guarded
from fxpress.backends.tvm.kernels.matmul import register_tile
from fxpress.backends.tvm.te_conv import te_quantized_conv2d
from fxpress.backends.tvm.te_dynamic import te_dynamic_linear_generic, te_row_params, te_row_quantize
from fxpress.backends.tvm.te_gemm import te_quantized_linear, te_quantized_matmul


def cpu_rules() -> list[Any]:
    """The generic CPU rules, in the order they are tried (after an ISA's own)."""
    return [
        CPUConv2d(),  # before the matmul rule: a 1x1 conv's block also looks like a batched matmul
        CPUMatmul(),
        CPURowReduction(),  # softmax, layer norm: before dlight's reduction rules, which leave them scalar
        Guarded(dl.cpu.GEMV()),
        Guarded(dl.cpu.Reduction()),
        CPUSeparablePool(),  # before the injective rule, which would inline its row pass
        CPUConvStemPrologue(),  # before the injective rule, whose vectors gather here
        CPUInjective(),
    ]


def gpu_rules() -> list[Any]:
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


class GenericInt8(Int8Lowering):
    """int32-accumulating GEMM / conv / batch matmul in the generic rules' panels (see module doc)."""

    def __init__(self, panel: int, packs_convs: bool = True) -> None:
        self.panel = panel
        self.packs_convs = packs_convs

    def linear(self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant) -> relax.Expr:
        n, panel = int(w.expr.ty.shape.values[0]), self.panel
        wp = bb.emit(relax.op.layout_transform(w.expr, lambda o, i: (o // panel, i, o % panel), pad_value=0))
        args = (x, wp, bias, rq.multiplier, rq.shift, int(x_zp), int(rq.out_zero_point), n, rq.scale)
        return bb.emit(bb.call_te(te_quantized_linear, *args, primfunc_name_hint="quantized_linear"))

    def conv2d(
        self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant, conv: Conv
    ) -> relax.Expr:
        if conv.channels_last:  # the generic conv is NCHW: between two transposes
            x_nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
            out = self.conv2d(bb, x_nchw, x_zp, w, bias, rq, Conv(conv.attrs))
            return bb.emit(relax.op.permute_dims(out, [0, 2, 3, 1]))
        out_channels, panel = int(w.expr.ty.shape.values[0]), self.panel
        weight = w.expr
        if conv.groups == 1 and self.packs_convs:  # panels: the conv rule vectorizes over output channels
            layout = lambda o, i, h, k: (o // panel, i, h, k, o % panel)  # noqa: E731
            weight = bb.emit(relax.op.layout_transform(weight, layout, pad_value=0))
        args = (
            x,
            weight,
            bias,
            rq.multiplier,
            rq.shift,
            int(x_zp),
            rq.out_zero_point,
            conv.attrs,
            out_channels,
            rq.scale,
        )
        return bb.emit(bb.call_te(te_quantized_conv2d, *args, primfunc_name_hint="quantized_conv2d"))

    def matmul(
        self, bb: Any, a: relax.Expr, a_zp: int, b: relax.Expr, b_zp: int, scalars: tuple[int, int, int], scale: Any
    ) -> relax.Expr:
        args = (a, b, int(a_zp), int(b_zp), *scalars, scale)
        return bb.emit(bb.call_te(te_quantized_matmul, *args, primfunc_name_hint="quantized_matmul"))

    def dynamic_linear(self, bb: Any, x2: relax.Expr, w: Int8Weight, weight_scale: Any, bias: Any) -> relax.Expr:
        params = bb.emit(bb.call_te(te_row_params, x2, primfunc_name_hint="row_params"))
        a = bb.emit(bb.call_te(te_row_quantize, x2, params, 1, False, primfunc_name_hint="row_quantize"))
        args = (a, w.expr, weight_scale, bias, params)
        return bb.emit(bb.call_te(te_dynamic_linear_generic, *args, primfunc_name_hint="dynamic_quantized_linear"))


class GenericISA(ISA):
    """No ISA-specific kernels: the generic CPU (or GPU) rules and int8 lowering."""

    def int8_lowering(self, target: Target) -> Int8Lowering:
        if self.arch == "cuda":
            return GenericInt8(16, packs_convs=False)
        _, nr, lanes = register_tile(target)
        return GenericInt8(nr * lanes)

    def schedule_rules(self) -> list[Any]:
        return gpu_rules() if self.arch == "cuda" else cpu_rules()


X86_64 = GenericISA(
    "x86-64",
    "baseline x86-64 (SSE2): fxpress's generic schedules, no ISA-specific kernels",
    "x86_64",
    "x86-64",
    (),
    128,
)
ARM = GenericISA("arm", "aarch64 Linux with NEON and dot-product (cross build)", "aarch64", None, (), 128)
CUDA = GenericISA("cuda", "NVIDIA GPU, sm_90 (cross build; runs where a GPU is)", "cuda", None, (), 0)
