"""Bias correction: remove the mean output shift that rounding a layer's weights to int8 causes.

Rounding a weight ``W`` to its int8 levels leaves an error ``dW = W_q - W``; on inputs with a mean
``E[x]`` the layer's output moves by ``dW · E[x]`` per output channel on average, a bias the next layers
see as a systematic error (Nagel et al., "Data-Free Quantization", 2019, section 4.2, empirical form;
NNCF's fast bias correction does the same). Depthwise convs after BN folding, whose few weights per
channel round coarsely, suffer most. ``calibrate{bias-correction=true}`` records ``E[x]`` for every
linear and conv whose weight observe quantized (an `InputMean` on the layer); ``fold-qdq`` then
subtracts the exact mean shift from the bias it folds:

    linear:  shift[o] = sum_k dW[o, k] * E[x][k]                       (E over every leading dim)
    conv2d:  shift[o] = mean_{h,w} conv2d(E[x], dW, stride, padding, dilation, groups)[o, h, w]
             (E over the batch only, kept per position: zero padding and borders are counted exactly)

Both are exact expectations of the output change over the calibration data, since the layer is linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fxpress.ir.annotations import Annotation


@dataclass(frozen=True, eq=False)
class InputMean(Annotation):
    """The mean of a linear's or conv's input over the calibration data (see the module docstring)."""

    key = "input-mean"
    mean: torch.Tensor
    batches: int

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, InputMean)
            and other.batches == self.batches
            and other.mean.shape == self.mean.shape
            and bool(torch.equal(other.mean, self.mean))
        )

    def __hash__(self) -> int:
        return hash((self.key, tuple(self.mean.shape), self.batches))

    def text(self) -> str:
        return f"input-mean {list(self.mean.shape)} over {self.batches} batches"


class MeanCollector:
    """Sums a layer's inputs over calibration batches: per position for convs, per feature for linears."""

    def __init__(self, conv: bool) -> None:
        self.conv = conv
        self.total: torch.Tensor | None = None
        self.count = 0
        self.batches = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        flat = x if self.conv else x.reshape(-1, x.shape[-1])
        part = flat.sum(0)
        self.total = part if self.total is None else self.total + part
        self.count += flat.shape[0]
        self.batches += 1

    def result(self) -> InputMean | None:
        if self.total is None or self.count == 0:
            return None
        return InputMean((self.total / self.count).float(), self.batches)


def mean_shift(mean: InputMean, delta: torch.Tensor, conv: tuple[Any, ...] = ()) -> torch.Tensor:
    """``E[y_q - y]`` per output channel for weight error `delta` (float64), a conv's `conv` attributes given.

    `conv` is fold-qdq's (stride, [top, left, bottom, right], dilation, groups).
    """
    m = mean.mean.double()
    if not conv:
        return delta.reshape(delta.shape[0], -1) @ m
    stride, pads, dilation, groups = conv
    top, left, bottom, right = pads
    padded = F.pad(m[None], (left, right, top, bottom))
    return F.conv2d(padded, delta, None, stride, 0, dilation, groups).mean((0, 2, 3))
