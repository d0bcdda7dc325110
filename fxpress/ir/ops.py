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
"""

from __future__ import annotations

import math

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
