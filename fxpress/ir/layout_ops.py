"""Channels-last (NHWC) forms of fxpress's int8 conv ops and of max-pool, for the TVM backend's layout rewrite.

    quantized_conv2d_nhwc(x, ...)        = quantized_conv2d(x as NCHW, ...) as NHWC
    quantized_conv2d_float_nhwc(x, ...)  = quantized_conv2d_float(x as NCHW, ...) as NHWC
    max_pool2d_nhwc(x, k, s, p, d)       = max_pool2d(x as NCHW, k, s, p, d) as NHWC

Same arguments as the NCHW ops (weights stay OIHW); only the activation
layout differs. The TVM backend (backends/tvm/channels_last.py) rewrites a
graph's AVX2 convs into these before export, so each conv reads and writes
the channel-contiguous layout its kernel works in: no transposing prologue
before a conv, and a requantization epilogue that stores whole vectors. The
references permute and call the NCHW reference, so a rewritten graph still
runs in eager PyTorch with the same integers.
"""

from __future__ import annotations

from typing import Any

import torch

from fxpress.ir.ops import quantized_conv2d, quantized_conv2d_float

_LIB = "fxpress"


def _nchw(x: torch.Tensor) -> torch.Tensor:
    # contiguous: torch's int8 max-pool fails on a channels-last strided view
    return x.permute(0, 3, 1, 2).contiguous()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


@torch.library.custom_op(f"{_LIB}::quantized_conv2d_nhwc", mutates_args=())
def quantized_conv2d_nhwc(
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
    """`quantized_conv2d` with NHWC input and output."""
    args = (weight, bias, multiplier, shift, out_zero_point, stride, padding, dilation, groups)
    return _nhwc(quantized_conv2d(_nchw(x), x_zero_point, *args))


@quantized_conv2d_nhwc.register_fake
def _(x: torch.Tensor, x_zero_point: int, weight: torch.Tensor, *rest: Any) -> torch.Tensor:
    return _conv_output_nhwc(x, weight, rest, torch.int8)


@torch.library.custom_op(f"{_LIB}::quantized_conv2d_float_nhwc", mutates_args=())
def quantized_conv2d_float_nhwc(
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
    """`quantized_conv2d_float` with NHWC input and output."""
    return _nhwc(quantized_conv2d_float(_nchw(x), x_zero_point, weight, bias, scale, stride, padding, dilation, groups))


@quantized_conv2d_float_nhwc.register_fake
def _(x: torch.Tensor, x_zero_point: int, weight: torch.Tensor, *rest: Any) -> torch.Tensor:
    return _conv_output_nhwc(x, weight, rest, torch.float32)


def _conv_output_nhwc(x: torch.Tensor, weight: torch.Tensor, rest: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The empty NHWC output; `rest` ends with (stride, padding, dilation, groups) in both conv ops."""
    stride, padding, dilation, _ = rest[-4:]
    n, h, w, _ = x.shape
    kh, kw = weight.shape[2:]
    top, left, bottom, right = padding
    out_h = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((n, out_h, out_w, weight.shape[0]), dtype=dtype)


@torch.library.custom_op(f"{_LIB}::max_pool2d_nhwc", mutates_args=())
def max_pool2d_nhwc(
    x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int]
) -> torch.Tensor:
    """``max_pool2d`` (floor mode) with NHWC input and output; any dtype torch's max-pool takes (int8 included)."""
    return _nhwc(torch.ops.aten.max_pool2d.default(_nchw(x), kernel_size, stride, padding, dilation, False))


@max_pool2d_nhwc.register_fake
def _(
    x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int]
) -> torch.Tensor:
    n, h, w, c = x.shape
    out_h = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return x.new_empty((n, out_h, out_w, c))
