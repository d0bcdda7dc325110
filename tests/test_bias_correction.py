"""Bias correction (calibrate{bias-correction=true} -> fold-qdq): fxpress/quant/bias_correction.py.

The shift it removes is the exact mean of ``layer(x, W_q - W)`` over the calibration data (checked against
that mean computed directly, padding and strides included); after fold-qdq the int8 layer's mean output
error per channel is far smaller than without it; the means are annotations calibrate adds and takes off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxpress
from fxpress.ir import annotations as notes
from fxpress.passes import Calibrate, FoldQDQ, Observe
from fxpress.quant.bias_correction import InputMean, MeanCollector, mean_shift


@pytest.mark.parametrize(
    ("stride", "pads", "dilation", "groups"),
    [(1, [1, 1, 1, 1], 1, 1), (2, [0, 1, 0, 1], 1, 4), (1, [2, 2, 2, 2], 2, 1), (2, [1, 0, 2, 1], 1, 8)],
)
def test_conv_shift_is_the_exact_mean_of_the_error_output(stride, pads, dilation, groups):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 8, 7, 9, generator=g) + 0.5 for _ in range(4)]
    delta = torch.randn(16, 8 // groups, 3, 3, generator=g, dtype=torch.float64)
    collector = MeanCollector(conv=True)
    for x in xs:
        collector.add(x)
    mean = collector.result()
    assert isinstance(mean, InputMean) and mean.batches == 4
    conv = ([stride] * 2, pads, [dilation] * 2, groups)
    top, left, bottom, right = pads
    direct = torch.cat(
        [F.conv2d(F.pad(x.double(), (left, right, top, bottom)), delta, None, stride, 0, dilation, groups) for x in xs]
    ).mean((0, 2, 3))
    torch.testing.assert_close(mean_shift(mean, delta, conv), direct, rtol=1e-5, atol=1e-6)


def test_linear_shift_averages_every_leading_dimension():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 5, 6, generator=g) for _ in range(3)]
    delta = torch.randn(4, 6, generator=g, dtype=torch.float64)
    collector = MeanCollector(conv=False)
    for x in xs:
        collector.add(x)
    direct = torch.cat([F.linear(x.double(), delta).reshape(-1, 4) for x in xs]).mean(0)
    torch.testing.assert_close(mean_shift(collector.result(), delta), direct)


class Net(nn.Module):
    """A depthwise conv (few weights per channel: coarse rounding) between two pointwise ones, then a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # per-channel scales that make the depthwise weights round coarsely
            self.dw.weight.mul_(torch.linspace(0.05, 3.0, 16).reshape(16, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(F.relu6(self.dw(F.relu6(self.a(x)))))
        return self.fc(y.mean((2, 3)))


def _int8(graph: fxpress.Graph, data: list[tuple[torch.Tensor]], correct: bool) -> fxpress.Graph:
    """4-bit weights: a weight error large beside the activations' rounding."""
    return fxpress.optimize(
        graph, [Observe(per_channel=True, weight_bits=4), Calibrate(data=data, bias_correction=correct), FoldQDQ()]
    )


def test_corrected_int8_has_a_smaller_mean_error_per_channel():
    torch.manual_seed(3)
    model = Net().eval()
    data = [(torch.rand(8, 4, 10, 10) * 2,) for _ in range(6)]
    graph = fxpress.capture(model, data[0])
    plain, corrected = _int8(graph, data, False), _int8(graph, data, True)
    with torch.no_grad():
        ref = torch.cat([model(x) for (x,) in data])
    bias_plain = (torch.cat([plain(x) for (x,) in data]) - ref).mean(0).abs().mean()
    bias_corrected = (torch.cat([corrected(x) for (x,) in data]) - ref).mean(0).abs().mean()
    assert bias_corrected < 0.5 * bias_plain, (bias_corrected, bias_plain)
    assert corrected.trace[-2].stats["input_means"] == 4  # the three convs and the linear
    assert corrected.trace[-1].stats["folded"] == plain.trace[-1].stats["folded"] == 4


def test_means_are_annotations_calibrate_adds_and_takes_off():
    model = Net().eval()
    data = [(torch.rand(2, 4, 6, 6),)]
    observed = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(per_channel=True)])
    with_means = fxpress.optimize(observed, [Calibrate(data=data, bias_correction=True)])
    means = {n.name: notes.get(n, InputMean.key) for n in with_means.nodes("call_function")}
    shapes = {k: list(v.mean.shape) for k, v in means.items() if v is not None}
    assert shapes == {"conv2d": [4, 6, 6], "conv2d_1": [16, 6, 6], "conv2d_2": [16, 6, 6], "linear": [8]}
    assert "input-mean [4, 6, 6] over 1 batches" in str(with_means)
    again = fxpress.optimize(with_means, [Calibrate(data=data, bias_correction=True)])
    assert again.trace[-1].modified is False
    without = fxpress.optimize(with_means, [Calibrate(data=data)])
    assert without.trace[-1].modified is True
    assert not any(notes.get(n, InputMean.key) for n in without.nodes())


def test_option_parses_from_pipeline_text():
    from fxpress.passes import parse_pipeline

    (p,) = parse_pipeline("calibrate{bias-correction=true}")
    assert p == Calibrate(bias_correction=True) and p.text() == "calibrate{bias-correction=true}"
