"""The ISA protocol: what one instruction set owns in the TVM backend.

A target preset resolves once (targets.py) to an `ISA`. Everything that
depends on the instruction set asks it instead of testing CPU flags in place:

- `schedule_rules()`: the dlight rules tried on every PrimFunc, the ISA's own
  kernels first, then the generic ones (first match wins);
- `int8_lowering(target)`: an `Int8Lowering`, the half of the converters that emits the int8
  GEMM, conv and batched-matmul computations in the layouts its kernels take
  (weight packing included, as ``layout_transform``s that are lifted to
  compile time);
- `channels_last_int8`: whether int8 convs are rewritten NHWC before export
  (its direct conv kernels read and write channels last);
- `int8_prefers_7bit`: whether 7-bit weights (``observe{weight-reduce-range}``)
  let more layers take its fast int8 kernel (a hint for pipelines);
- `vector_bits`: its vector register width (recorded in the manifest);
- `prepare_runtime()`: what a process must do before running its code (AMX
  asks Linux for tile-data permission).
- `bf16_lowering(target)`: a `Bf16Lowering`, what ``fxpress.bf16_linear``
  becomes (the default, every ISA: a float32 GEMM over bf16-rounded
  operands; AMX: ``tdpbf16ps`` tiles).

Adding an instruction set is one module or folder with an `ISA` subclass (or
instance) and one line in the registry (isa/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tvm import relax
from tvm.target import Target

from fxpress.backends.tvm.te_bf16 import te_bf16_round

ConvAttrs = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int]]  # stride, padding, dilation, (groups,)


@dataclass(frozen=True)
class Requant:
    """How an int8 op's int32 accumulator leaves the kernel.

    Requantized to int8 by per-channel `multiplier` and `shift` (relax
    constants) and `out_zero_point`, or, with `scale` set, dequantized to
    float32 (``(acc + bias) * scale``). `narrow` says the converter proved the
    arithmetic fits int32 (a cheaper epilogue).
    """

    multiplier: Any
    shift: Any
    out_zero_point: int
    scale: Any = None
    narrow: bool = False


@dataclass(frozen=True)
class Conv:
    """A conv's geometry as the converter read it, and whether its activations are NHWC (in and out)."""

    attrs: ConvAttrs
    channels_last: bool = False

    @property
    def groups(self) -> int:
        return self.attrs[3][0]


@dataclass(frozen=True)
class Int8Weight:
    """An int8 weight as the converter sees it: the relax expression and, when constant, its value."""

    expr: relax.Expr
    value: torch.Tensor | None = None


@dataclass(frozen=True)
class SparseInt8:
    """How an ISA runs int8 block-sparse linears (kernels/bsr_int8.py): `Int8Lowering.sparse_int8`'s answer.

    `intrinsic` computes one step (four kept columns into each of `lanes` int32
    lanes; isa/x86_vnni/sparse.py); a layer takes the kernel when its padded
    column density is at most `max_density` (measured against the ISA's own
    dense int8 kernel, tools/bench/sparsity.py).
    """

    intrinsic: str
    lanes: int
    max_density: float


class Int8Lowering:
    """Emits the int8 computations for one ISA (the default: none; the generic ISA implements them all)."""

    def sparse_int8(self, rows: int) -> SparseInt8 | None:
        """The int8 block-sparse kernel for blocks of `rows` output rows, or None: such layers stay dense."""
        return None

    def linear(self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant) -> relax.Expr:
        """``quantized_linear`` over 2-D rows `x` [M, K] and weights [N, K]."""
        raise NotImplementedError

    def conv2d(
        self, bb: Any, x: relax.Expr, x_zp: int, w: Int8Weight, bias: Any, rq: Requant, conv: Conv
    ) -> relax.Expr:
        """``quantized_conv2d`` (NCHW, or NHWC in and out when ``conv.channels_last``)."""
        raise NotImplementedError

    def matmul(
        self, bb: Any, a: relax.Expr, a_zp: int, b: relax.Expr, b_zp: int, scalars: tuple[int, int, int], scale: Any
    ) -> relax.Expr:
        """``quantized_matmul`` of two int8 activations, per-tensor requantized (or float out with `scale`)."""
        raise NotImplementedError

    def dynamic_linear(self, bb: Any, x2: relax.Expr, w: Int8Weight, weight_scale: Any, bias: Any) -> relax.Expr:
        """``dynamic_quantized_linear`` over 2-D float rows: quantized per row at run time."""
        raise NotImplementedError


class Bf16Lowering:
    """Emits ``bf16_linear`` and ``bf16_conv2d`` (both operands rounded to bf16, float32 sums) for one ISA.

    The default, right on every CPU: round the rows and the weight to bf16
    values held in float32 (te_bf16.py; the weight's rounding is lifted to
    compile time) and run the float32 ``linear``, whose packed-weight GEMM
    rules schedule it (a conv: the float32 conv rules). The products of bf16 values are exact in float32, so
    only the order of the sums differs from the reference.
    """

    def linear(self, bb: Any, x2: relax.Expr, weight: relax.Expr, bias: relax.Expr | None) -> relax.Expr:
        """``bf16_linear`` over 2-D float32 rows `x2` [M, K] and weights [N, K]."""
        xr = bb.emit(bb.call_te(te_bf16_round, x2, primfunc_name_hint="bf16_round"))
        wr = bb.emit(bb.call_te(te_bf16_round, weight, primfunc_name_hint="bf16_round"))
        return bb.emit(relax.op.linear(xr, wr, bias))

    def conv2d(
        self, bb: Any, x: relax.Expr, weight: relax.Expr, bias: relax.Expr | None, attrs: ConvAttrs
    ) -> relax.Expr:
        """``bf16_conv2d`` (NCHW) with `attrs` = (stride, padding (top, left, bottom, right), dilation, (groups,))."""
        stride, padding, dilation, (groups,) = attrs
        xr = bb.emit(bb.call_te(te_bf16_round, x, primfunc_name_hint="bf16_round"))
        wr = bb.emit(bb.call_te(te_bf16_round, weight, primfunc_name_hint="bf16_round"))
        y = bb.emit(relax.op.nn.conv2d(xr, wr, strides=stride, padding=padding, dilation=dilation, groups=groups))
        if bias is None:
            return y
        return bb.emit(relax.op.add(y, relax.op.reshape(bias, (1, -1, 1, 1))))


@dataclass(frozen=True)
class ISA:
    """One instruction set: its preset name, what it needs of a CPU, and what it owns (see module doc)."""

    name: str
    description: str
    arch: str  # "x86_64", "aarch64" or "cuda"
    mcpu: str | None  # the LLVM cpu a pinned build uses (None: the host's own, or none)
    requires: tuple[str, ...] = ()  # /proc/cpuinfo flags its code needs
    vector_bits: int = 128
    channels_last_int8: bool = False
    # its fast int8 kernel saturates on some 8-bit weights (AVX2's vpmaddubsw): 7-bit weights
    # (observe{weight-reduce-range=true}) let every layer take it; VNNI and AMX need no such thing
    int8_prefers_7bit: bool = False

    def int8_lowering(self, target: Target) -> Int8Lowering:
        raise NotImplementedError

    def schedule_rules(self) -> list[Any]:
        raise NotImplementedError

    def bf16_lowering(self, target: Target) -> Bf16Lowering:
        return Bf16Lowering()

    def prepare_runtime(self) -> None:
        """Make this process able to run the ISA's code (nothing for most ISAs)."""
