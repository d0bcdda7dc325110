"""``fxpress::fake_quantize``: the trainable fake-quantization op of quantization-aware training.

    y = fake_quantize(x, scale, zero_point, qmin, qmax, axis, grad_factor)
      = (clamp(round(x / scale) + z, qmin, qmax) - z) * scale,   z = clamp(round(zero_point), qmin, qmax)

in float32, rounding half to even: the same values `fxpress.quant.scheme.fake_quantize`
gives (and so, after ``fold-qdq``, the same integers the int8 kernels see).
``axis`` is the channel dimension of per-channel parameters (``scale`` and
``zero_point`` one entry per channel), or -1 for one pair per tensor.
``zero_point`` is a float tensor so that it can be learned; it is used rounded
and clamped into the range, and a scale below float32 eps is used as eps
(what ``freeze-fake-quant`` writes back).

Gradients (Esser et al., 2020, "Learned Step Size Quantization", and LSQ+'s
offset, Bhalgat et al., 2020), with the straight-through estimator for
``round``; ``v = round(x / s) + round(z)`` is the integer before the clamp:

    dy/dx = 1 where qmin <= v <= qmax, else 0
    dy/ds = round(x/s) - x/s inside; qmin - z below; qmax - z above   (times grad_factor)
    dy/dz = 0 inside; -s outside                                        (times grad_factor)

summed over everything but the channel axis. ``grad_factor`` is LSQ's
``1 / sqrt(n * qmax)`` (``n`` the elements one scale covers), which keeps the
step size's updates in proportion to the weights' (`lsq_grad_factor`). Scale
and zero point only move if the graph holds them as parameters: the
``fake-quantize`` pass stores fixed ones as buffers.

The op has a fake implementation, so graphs holding it re-export; no backend
lowers it (``freeze-fake-quant`` turns it back into quantization parameters
before ``fold-qdq``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

EPS = torch.finfo(torch.float32).eps


def _shape(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """`t` (1-D) shaped to broadcast against `x` along `axis` (-1: one value for all)."""
    if axis < 0:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _parts(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x / s, s, z rounded and clamped into [qmin, qmax]), each broadcastable against x, in float32."""
    s = _shape(scale.float().clamp_min(EPS), x, axis)
    z = _shape(torch.round(zero_point.float()).clamp(qmin, qmax), x, axis)
    return x.float() / s, s, z


@torch.library.custom_op("fxpress::fake_quantize", mutates_args=())
def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int,
    grad_factor: float,
) -> torch.Tensor:
    """Round `x` to the grid of (scale, zero_point) in [qmin, qmax] (see the module docstring)."""
    ratio, s, z = _parts(x, scale, zero_point, qmin, qmax, axis)
    q = torch.clamp(torch.round(ratio) + z, qmin, qmax)
    return ((q - z) * s).to(x.dtype)


@fake_quantize.register_fake
def _(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int,
    grad_factor: float,
) -> torch.Tensor:
    return torch.empty_like(x)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, scale, zero_point, qmin, qmax, axis, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.qmin, ctx.qmax, ctx.axis, ctx.grad_factor = qmin, qmax, axis, grad_factor


def _reduce(t: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Sum `t` over every dimension but `axis`, shaped like the parameter `like`."""
    if axis < 0:
        return t.sum().reshape(like.shape)
    dims = [d for d in range(t.dim()) if d != axis]
    return t.sum(dim=dims).reshape(like.shape)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    x, scale, zero_point = ctx.saved_tensors
    ratio, s, z = _parts(x, scale, zero_point, ctx.qmin, ctx.qmax, ctx.axis)
    v = torch.round(ratio) + z
    below, above = v < ctx.qmin, v > ctx.qmax
    inside = ~(below | above)
    g = grad.float()
    grad_x = (g * inside).to(x.dtype) if ctx.needs_input_grad[0] else None
    grad_s = grad_z = None
    if ctx.needs_input_grad[1]:
        ds = torch.where(inside, torch.round(ratio) - ratio, torch.where(below, ctx.qmin - z, ctx.qmax - z))
        grad_s = (_reduce(g * ds, scale, ctx.axis) * ctx.grad_factor).to(scale.dtype)
    if ctx.needs_input_grad[2]:
        dz = torch.where(inside, torch.zeros_like(ratio), -s.expand_as(ratio))
        grad_z = (_reduce(g * dz, zero_point, ctx.axis) * ctx.grad_factor).to(zero_point.dtype)
    return grad_x, grad_s, grad_z, None, None, None, None


fake_quantize.register_autograd(_backward, setup_context=_setup)


def lsq_grad_factor(elements_per_scale: int, qmax: int) -> float:
    """LSQ's gradient scale ``1 / sqrt(n * qmax)`` (``qmax`` at least 1)."""
    return 1.0 / math.sqrt(max(elements_per_scale, 1) * max(qmax, 1))
