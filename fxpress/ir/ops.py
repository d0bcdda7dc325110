"""fxpress's own operators, registered with torch.library, each with a reference.

The quantization passes rewrite graphs to call these ops. Every op has a
reference implementation in plain PyTorch (so a quantized graph runs in eager
PyTorch, which is the oracle) and a fake implementation (so it re-exports with
torch.export). The TVM backend lowers each one through
``custom_convert_map`` to a kernel with the *same integer arithmetic*, so the
compiled result is bit-exact with the reference.

Integer conventions (those of gemmlowp / TFLite, spelled out):

- ``quantize(x, scale, zp, qmin, qmax)  = clamp(nearbyint(x / scale) + zp, qmin, qmax)``
  (ties to even, computed in float32) as int8;
- ``dequantize(q, scale, zp) = (q - zp) * scale`` in float32;
- ``quantized_linear``: ``acc[.., n] = sum_k (x[.., k] - x_zp) * w[n, k] + bias[n]``
  in int32, then requantized per output channel with a Q31 fixed-point
  ``multiplier[n]`` (in [2^30, 2^31)) and a right ``shift[n]`` (>= -30):
  ``y = (acc * multiplier + 2^(30 + shift)) >> (31 + shift)`` in int64 (round
  half up), ``clamp(y + out_zp, -128, 127)`` as int8. `requantize_params`
  turns real multipliers ``x_scale * w_scale[n] / out_scale`` into that form.
- ``quantized_linear_float``: the same accumulation, float32 out:
  ``y[.., n] = float32(acc[.., n]) * scale[n]`` (``scale = x_scale *
  w_scale[n]``), for a layer that only float ops read (a transformer's FFN
  up-projection before its GELU, the attention output before the residual
  add): no output requantization to round to a calibrated grid and undo.
- ``quantized_conv2d``: the same per output channel ``o`` of an NCHW
  convolution, ``acc[n, o, y, x] = sum (x_pad - x_zp) * w[o, c, ky, kx] + bias[o]``,
  where the input is padded with ``x_zp`` (so padding adds zero),
  ``padding = [top, left, bottom, right]``, and ``groups`` splits the channels
  (depthwise: ``groups == C``).
- ``quantized_conv2d_float``: the same accumulation, float32 NCHW out,
  ``float32(acc[n, o, y, x]) * scale[o]`` (a conv that only float ops read:
  a ReLU, ResNet's residual add).
- ``quantized_matmul``: two int8 activations (attention's Q·Kᵀ and P·V),
  ``acc[.., i, j] = sum_k (a[.., i, k] - a_zp) * (b[.., k, j] - b_zp)`` (batch
  dimensions broadcast like ``torch.matmul``), requantized with one
  per-tensor ``multiplier`` and ``shift``.
- ``quantized_matmul_float``: the same accumulation, float32 out:
  ``y = float32(acc) * scale`` (``scale = a_scale * b_scale``, one float32
  rounding of an exact integer), for a product that only float ops read
  (attention's Q·Kᵀ before its softmax): no output requantization to round
  to a calibrated grid and dequantize again.
- ``dynamic_quantized_linear``: float in, float out; each row of ``x`` is
  quantized at run time to uint8 with its own affine parameters
  (``lo = min(min_k x, 0)``, ``hi = max(max_k x, 0)``, ``scale = max((hi - lo)
  / 255, eps)``, ``zp = clamp(nearbyint(-lo / scale), 0, 255)``, ``u =
  clamp(nearbyint(x / scale) + zp, 0, 255)``, all float32), then
  ``acc[.., n] = sum_k (u - zp) * w[n, k]`` exactly and ``y = float(acc) *
  (scale * w_scale[n]) + bias[n]`` in float32. Per-row ranges follow each
  token's own range, which a static per-tensor range cannot (a transformer's
  FFN down-projection input).
- ``bf16_linear``: float in, float out, a float layer computed in bfloat16:
  ``y[.., n] = sum_k bf16(x[.., k]) * bf16(w[n, k]) + bias[n]``, both
  operands rounded to bfloat16 (round to nearest even, torch's ``.to``), the
  products (exact in float32) summed in float32. Kernels differ from it only
  in the order of the float32 sums (AMX-BF16 ``tdpbf16ps``, or a float32
  GEMM over the rounded values).
- ``bf16_conv2d``: the same for an NCHW ``conv2d`` (stride, padding,
  dilation, groups as ``aten.conv2d``'s): input and weight rounded to
  bfloat16, float32 sums, float32 bias.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_LIB = "fxpress"


@torch.library.custom_op(f"{_LIB}::quantize", mutates_args=())
def quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """float32 -> int8 (per tensor), ties to even, saturating to [qmin, qmax]."""
    q = torch.round(x.float() / torch.tensor(scale, dtype=torch.float32)) + zero_point
    return q.clamp(qmin, qmax).to(torch.int8)


@quantize.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.int8)


@torch.library.custom_op(f"{_LIB}::dequantize", mutates_args=())
def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """int8 -> float32 (per tensor): ``(q - zero_point) * scale``."""
    return (q.to(torch.int32) - zero_point).to(torch.float32) * torch.tensor(scale, dtype=torch.float32)


@dequantize.register_fake
def _(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return torch.empty_like(q, dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::quantized_linear", mutates_args=())
def quantized_linear(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    out_zero_point: int,
) -> torch.Tensor:
    """int8 x int8 -> int32 accumulate -> fixed-point requantize -> int8 (see module doc)."""
    acc = torch.matmul(x.to(torch.int64) - x_zero_point, weight.to(torch.int64).t()) + bias.to(torch.int64)
    return _requantize(acc, multiplier, shift, out_zero_point)


@torch.library.custom_op(f"{_LIB}::quantized_linear_float", mutates_args=())
def quantized_linear_float(
    x: torch.Tensor, x_zero_point: int, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """int8 x int8 -> exact accumulation + int32 bias -> float32 times `scale` per channel (see module doc)."""
    acc = torch.matmul(x.to(torch.int64) - x_zero_point, weight.to(torch.int64).t()) + bias.to(torch.int64)
    return acc.to(torch.float32) * scale.to(torch.float32)


@quantized_linear_float.register_fake
def _(
    x: torch.Tensor, x_zero_point: int, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


def _requantize(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor, out_zero_point: int) -> torch.Tensor:
    """int64 accumulators -> int8; `multiplier` and `shift` broadcast against `acc` (channels last)."""
    total = 31 + shift.to(torch.int64)
    y = (acc * multiplier.to(torch.int64) + (torch.ones_like(total) << (total - 1))) >> total
    return (y + out_zero_point).clamp(-128, 127).to(torch.int8)


@quantized_linear.register_fake
def _(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    out_zero_point: int,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.int8)


# |x - x_zp| <= 255 and |w| <= 128, so every partial sum of a convolution with fewer
# than this many terms per output is an integer below 2^53: exact in float64.
_F64_EXACT_TERMS = 2**53 // (255 * 128)


def _conv_acc(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """The exact int64 accumulators ``sum (x_pad - x_zp) * w`` of an NCHW conv (no bias).

    Computed as a float64 convolution (PyTorch's CPU float64 convolutions are
    direct or im2col sums of products, never Winograd/FFT), which is exact:
    every product and partial sum is an integer below 2^53.
    """
    terms = weight.shape[1] * weight.shape[2] * weight.shape[3]
    if terms >= _F64_EXACT_TERMS:
        raise ValueError(f"quantized_conv2d: {terms} terms per output exceed the exact float64 range")
    top, left, bottom, right = padding
    centred = torch.nn.functional.pad(x.double() - x_zero_point, (left, right, top, bottom))
    acc = torch.nn.functional.conv2d(centred, weight.double(), stride=stride, dilation=dilation, groups=groups)
    return acc.to(torch.int64)


@torch.library.custom_op(f"{_LIB}::quantized_conv2d", mutates_args=())
def quantized_conv2d(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    out_zero_point: int,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """int8 NCHW conv2d, int32 accumulate, per-channel fixed-point requantize -> int8 (see module doc)."""
    acc = _conv_acc(x, x_zero_point, weight, stride, padding, dilation, groups) + bias.to(torch.int64)[:, None, None]
    return _requantize(acc, multiplier[:, None, None], shift[:, None, None], out_zero_point)


@quantized_conv2d.register_fake
def _(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    out_zero_point: int,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    return _conv_output(x, weight, stride, padding, dilation, torch.int8)


@torch.library.custom_op(f"{_LIB}::quantized_conv2d_float", mutates_args=())
def quantized_conv2d_float(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """int8 NCHW conv2d, exact accumulation + int32 bias -> float32 times `scale` per channel (see module doc)."""
    acc = _conv_acc(x, x_zero_point, weight, stride, padding, dilation, groups) + bias.to(torch.int64)[:, None, None]
    return acc.to(torch.float32) * scale.to(torch.float32)[:, None, None]


@quantized_conv2d_float.register_fake
def _(
    x: torch.Tensor,
    x_zero_point: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    return _conv_output(x, weight, stride, padding, dilation, torch.float32)


def _conv_output(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The empty NCHW output of a conv (the fake implementations' shape rule; symbolic sizes pass through)."""
    n, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    top, left, bottom, right = padding
    out_h = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((n, weight.shape[0], out_h, out_w), dtype=dtype)


@torch.library.custom_op(f"{_LIB}::quantized_matmul", mutates_args=())
def quantized_matmul(
    a: torch.Tensor,
    a_zero_point: int,
    b: torch.Tensor,
    b_zero_point: int,
    multiplier: int,
    shift: int,
    out_zero_point: int,
) -> torch.Tensor:
    """int8 [.., M, K] x int8 [.., K, N] -> int32 accumulate -> fixed-point requantize -> int8 (see module doc)."""
    if a.shape[-1] * 255 * 255 >= 2**53:
        raise ValueError(f"quantized_matmul: K = {a.shape[-1]} exceeds the exact float64 range")
    # a float64 matmul of integers whose partial sums stay below 2^53 is exact
    acc = torch.matmul(a.double() - a_zero_point, b.double() - b_zero_point).to(torch.int64)
    return _requantize(acc, torch.tensor(multiplier), torch.tensor(shift), out_zero_point)


@quantized_matmul.register_fake
def _(
    a: torch.Tensor,
    a_zero_point: int,
    b: torch.Tensor,
    b_zero_point: int,
    multiplier: int,
    shift: int,
    out_zero_point: int,
) -> torch.Tensor:
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.new_empty((*batch, a.shape[-2], b.shape[-1]), dtype=torch.int8)


@torch.library.custom_op(f"{_LIB}::quantized_matmul_float", mutates_args=())
def quantized_matmul_float(
    a: torch.Tensor, a_zero_point: int, b: torch.Tensor, b_zero_point: int, scale: float
) -> torch.Tensor:
    """int8 [.., M, K] x int8 [.., K, N] -> exact int32 accumulation -> float32 times `scale` (see module doc)."""
    if a.shape[-1] * 255 * 255 >= 2**31:
        raise ValueError(f"quantized_matmul_float: K = {a.shape[-1]} overflows the int32 accumulator")
    acc = torch.matmul(a.double() - a_zero_point, b.double() - b_zero_point).to(torch.int64)
    return acc.to(torch.float32) * torch.tensor(scale, dtype=torch.float32)


@quantized_matmul_float.register_fake
def _(a: torch.Tensor, a_zero_point: int, b: torch.Tensor, b_zero_point: int, scale: float) -> torch.Tensor:
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.new_empty((*batch, a.shape[-2], b.shape[-1]), dtype=torch.float32)


def requantize_params(real_multiplier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q31 ``multiplier`` and right ``shift`` (int32 each) with ``m * 2^-(31+shift) ~= real``.

    Each real multiplier must lie in [2^-32, 2^30) (so the total right shift
    stays within 1..62 bits of int64 arithmetic); the relative error of the
    fixed-point form is below 2^-30.
    """
    values = real_multiplier.double().flatten().tolist()
    mults, shifts = [], []
    for r in values:
        if not (2.0**-32 <= r < 2.0**30) or not math.isfinite(r):
            raise ValueError(f"requantization multiplier must be in [2^-32, 2^30), got {r}")
        mantissa, exponent = math.frexp(r)  # r = mantissa * 2^exponent, mantissa in [0.5, 1)
        m = round(mantissa * (1 << 31))
        if m == 1 << 31:  # rounding overflowed the mantissa
            m //= 2
            exponent += 1
        mults.append(m)
        shifts.append(-exponent)
    shape = real_multiplier.shape
    return (
        torch.tensor(mults, dtype=torch.int32).reshape(shape),
        torch.tensor(shifts, dtype=torch.int32).reshape(shape),
    )


@torch.library.custom_op(f"{_LIB}::dynamic_quantized_linear", mutates_args=())
def dynamic_quantized_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """float32 [.., K] -> per-row uint8 at run time -> int8 weights [N, K] -> float32 [.., N] (see module doc)."""
    x = x.float()
    lo = torch.clamp(x.amin(-1, keepdim=True), max=0.0)
    hi = torch.clamp(x.amax(-1, keepdim=True), min=0.0)
    scale = torch.clamp((hi - lo) / torch.tensor(255.0), min=torch.finfo(torch.float32).eps)
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    u = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    # a float64 matmul of integers whose partial sums stay below 2^53 is exact
    acc = torch.matmul(u.double() - zp.double(), weight.double().t())
    return acc.float() * (scale * weight_scale.float()) + bias.float()


@dynamic_quantized_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


def bf16_round(t: torch.Tensor) -> torch.Tensor:
    """`t`'s values rounded to bfloat16 (nearest even), as float32."""
    return t.float().to(torch.bfloat16).float()


@torch.library.custom_op(f"{_LIB}::bf16_linear", mutates_args=())
def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 [.., K] x [N, K] -> float32 [.., N] with both operands rounded to bfloat16 (see module doc)."""
    y = torch.nn.functional.linear(bf16_round(x), bf16_round(weight))
    return y + bias.float() if bias is not None else y


@bf16_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


def _bf16_linear_setup(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(bf16_round(x), bf16_round(weight))
    ctx.has_bias = bias is not None  # type: ignore[attr-defined]


def _bf16_linear_backward(
    ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """Straight through the rounding: the gradients of the float linear at the rounded operands."""
    xb, wb = ctx.saved_tensors  # type: ignore[attr-defined]
    grad_x = grad @ wb
    grad_w = grad.reshape(-1, grad.shape[-1]).t() @ xb.reshape(-1, xb.shape[-1])
    grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None  # type: ignore[attr-defined]
    return grad_x, grad_w, grad_b


bf16_linear.register_autograd(_bf16_linear_backward, setup_context=_bf16_linear_setup)


@torch.library.custom_op(f"{_LIB}::bf16_conv2d", mutates_args=())
def bf16_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """float32 NCHW conv2d with input and weight rounded to bfloat16 (see module doc)."""
    return torch.nn.functional.conv2d(bf16_round(x), bf16_round(weight), bias, stride, padding, dilation, groups)


@bf16_conv2d.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _bf16_conv2d_setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(bf16_round(x), bf16_round(weight), bias)
    ctx.conv = (stride, padding, dilation, groups)  # type: ignore[attr-defined]


def _bf16_conv2d_backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[Any, ...]:
    """Straight through the rounding: the float conv's gradients at the rounded operands."""
    xb, wb, bias = ctx.saved_tensors  # type: ignore[attr-defined]
    leaves = [t.detach().requires_grad_() for t in (xb, wb)]
    b = bias.detach().requires_grad_() if bias is not None else None
    with torch.enable_grad():
        stride, padding, dilation, groups = ctx.conv  # type: ignore[attr-defined]
        y = torch.nn.functional.conv2d(leaves[0], leaves[1], b, stride, padding, dilation, groups)
        grads = torch.autograd.grad(y, [*leaves, *([b] if b is not None else [])], grad)
    return grads[0], grads[1], grads[2] if b is not None else None, None, None, None, None


bf16_conv2d.register_autograd(_bf16_conv2d_backward, setup_context=_bf16_conv2d_setup)
