"""int8 conv2d: the exact reference, fold-qdq on convs (golden IR, numerics, leave-alone), TVM bit-exact."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import SmallCNN, randomize_bn
from torch import nn

import fxpress
from fxpress.ir import ops
from fxpress.ir.annotations import get
from fxpress.passes import Calibrate, Observe
from fxpress.passes.fold_qdq import FoldQDQ

# (in channels, out channels, kernel, stride, [top, left, bottom, right], dilation, groups, input H x W)
CONVS = {
    "3x3-pad1": (8, 16, 3, 1, [1, 1, 1, 1], 1, 1, (9, 9)),
    "stride2-7x7in": (5, 24, 3, 2, [1, 1, 1, 1], 1, 1, (7, 7)),
    "1x1-odd-c": (13, 20, 1, 1, [0, 0, 0, 0], 1, 1, (5, 7)),
    "depthwise": (12, 12, 3, 1, [1, 1, 1, 1], 1, 12, (8, 6)),
    "grouped-dilated-asym": (12, 18, 3, 1, [0, 1, 2, 1], 2, 3, (11, 9)),
    "stem-7x7-s2": (3, 16, 7, 2, [3, 3, 3, 3], 1, 1, (15, 15)),
    "1ch-5x5-asym": (1, 8, 5, 1, [2, 1, 2, 3], 1, 1, (9, 11)),
    "2ch-3x3-s2-asym": (2, 16, 3, 2, [1, 0, 1, 2], 1, 1, (10, 13)),
}


def _int8_conv(cin: int, cout: int, k: int, groups: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random int8 weights, int32 bias and requantization parameters that spread the outputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (cout, cin // groups, k, k), generator=g, dtype=torch.int8)
    bias = torch.randint(-5000, 5000, (cout,), generator=g, dtype=torch.int32)
    real = (torch.rand(cout, generator=g, dtype=torch.float64) + 0.5) * 0.02 / (cin // groups * k * k)
    return (w, bias, *ops.requantize_params(real))


def _exact_conv_acc(xq: torch.Tensor, x_zp: int, w: torch.Tensor, stride, padding, dilation, groups) -> torch.Tensor:
    """An independent integer computation: unfold + int64 matmul per group."""
    top, left, bottom, right = padding
    x = nn.functional.pad(xq.to(torch.int64) - x_zp, (left, right, top, bottom))
    n, _, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = nn.functional.unfold(x.double(), (kh, kw), dilation=dilation, stride=stride).round().to(torch.int64)
    cols = cols.reshape(n, groups, -1, oh * ow)  # unfold orders rows (channel, ky, kx), as weights flatten
    wg = w.to(torch.int64).reshape(groups, w.shape[0] // groups, -1)
    return torch.einsum("gok,ngkp->ngop", wg, cols).reshape(n, w.shape[0], oh, ow)


@pytest.mark.parametrize("case", sorted(CONVS))
def test_reference_is_exact_and_tracks_float(case: str) -> None:
    cin, cout, k, s, pad, d, groups, hw = CONVS[case]
    w, bias, mult, shift = _int8_conv(cin, cout, k, groups, seed=len(case))
    x_scale, x_zp, out_zp = 0.05, 7, -3
    xq = ops.quantize(torch.randn(2, cin, *hw) * 3, x_scale, x_zp, -128, 127)
    args = ([s, s], pad, [d, d], groups)
    yq = ops.quantized_conv2d(xq, x_zp, w, bias, mult, shift, out_zp, *args)
    # exact: the int64 accumulators of an unfold + integer matmul, requantized the documented way
    acc = _exact_conv_acc(xq, x_zp, w, *args) + bias.to(torch.int64)[:, None, None]
    total = 31 + shift.to(torch.int64)[:, None, None]
    want = ((acc * mult.to(torch.int64)[:, None, None] + (1 << (total - 1))) >> total) + out_zp
    torch.testing.assert_close(yq, want.clamp(-128, 127).to(torch.int8), rtol=0, atol=0)
    assert len(yq.unique()) > 20  # a real spread of outputs, not all saturated
    # and within rounding of a float convolution on the dequantized values
    real = mult.double() * torch.pow(2.0, -(31 + shift.double()))  # x_scale * w_scale / out_scale
    out_scale = 0.1
    w_scale = real * out_scale / x_scale
    xf = ops.dequantize(xq, x_scale, x_zp).double()
    top, left, bottom, right = pad
    xf = nn.functional.pad(xf, (left, right, top, bottom))
    yf = nn.functional.conv2d(xf, w.double() * w_scale[:, None, None, None], stride=s, dilation=d, groups=groups)
    yf = yf + (bias.double() * x_scale * w_scale)[:, None, None]
    inside = (yq > -128) & (yq < 127)
    y = (yq.double() - out_zp) * out_scale
    assert float((y - yf)[inside.expand_as(y)].abs().max()) <= out_scale * (0.5 + 1e-6)


class QConvs(nn.Module):
    """quantize -> quantized_conv2d -> dequantize (the shape fold-qdq produces), one per case of `CONVS`."""

    def __init__(self, x_zp: int = 5, out_zp: int = -3) -> None:
        super().__init__()
        self.attrs = []
        for i, case in enumerate(sorted(CONVS)):
            cin, cout, k, s, pad, d, groups, _ = CONVS[case]
            for name, t in zip("wbms", _int8_conv(cin, cout, k, groups, seed=len(case)), strict=True):
                self.register_parameter(f"{name}{i}", nn.Parameter(t, requires_grad=False))
            self.attrs.append(([s, s], pad, [d, d], groups))
        self.x_zp, self.out_zp = x_zp, out_zp

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(xs):
            w, b, m, s = (getattr(self, f"{name}{i}") for name in "wbms")
            xq = ops.quantize(x, 0.05, self.x_zp, -128, 127)
            yq = ops.quantized_conv2d(xq, self.x_zp, w, b, m, s, self.out_zp, *self.attrs[i])
            out += [yq, ops.dequantize(yq, 0.1, self.out_zp)]
        return out


@pytest.mark.tvm
def test_quantized_conv2d_tvm_bit_exact(int8_path: str) -> None:
    """Every case of `CONVS` (regular, strided, 1x1, depthwise, grouped + dilated + asymmetric padding, stem)."""
    model = QConvs()
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(2, CONVS[case][0], *CONVS[case][-1], generator=g) * 3 for case in sorted(CONVS)]
    compiled = fxpress.compile(fxpress.capture(model, tuple(xs)), target=int8_path, num_threads=1)
    got, want = compiled(*[x.numpy() for x in xs]), model(*xs)
    for i, case in enumerate(sorted(CONVS)):
        yq, y = got[2 * i], got[2 * i + 1]
        assert yq.dtype == np.int8, case
        np.testing.assert_array_equal(yq, want[2 * i].numpy(), err_msg=case)
        np.testing.assert_array_equal(y, want[2 * i + 1].numpy(), err_msg=case)
        assert len(np.unique(yq)) > 20, case


class ConvBNReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def _data(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


def _quantize(model: nn.Module, data: list[tuple[torch.Tensor]], **observe: object) -> fxpress.Graph:
    graph = fxpress.capture(model.eval(), data[0])
    passes = ["fold-bn", Observe(per_channel=True, **observe), Calibrate(data=data), FoldQDQ()]
    return fxpress.optimize(graph, passes)


def _output_step(graph: fxpress.Graph) -> float:
    (out,) = graph.output_node.args[0]
    return float(get(out, "qparams").scale)


def _ops(graph: fxpress.Graph) -> list[str]:
    return re.findall(r"= ((?:aten|fxpress)\.[A-Za-z_0-9.]+)\(", str(graph))


def test_golden_conv_bn_relu_block() -> None:
    torch.manual_seed(0)
    data = _data((2, 8, 9, 9))
    model = ConvBNReLU().eval()
    q = _quantize(model, data)
    assert q.pipeline.endswith("calibrate,fold-qdq")
    # only the (float) ReLU reads the conv: its float-out form, no requantize-then-dequantize
    assert _ops(q) == ["fxpress.quantize", "fxpress.quantized_conv2d_float", "aten.relu"]
    text = str(q)
    # int8 weights (per output channel), int32 bias, float32 output scales; the float weights are gone
    for decl in ("param i8[16,8,3,3]", "param i32[16]", "param f32[16]"):
        assert decl in text
    assert all(t.dtype in (torch.int8, torch.int32, torch.float32) for t in q.params().values())
    conv = re.search(r"fxpress\.quantized_conv2d_float\((.*)\) : (\S+)", text)
    assert conv is not None
    assert conv.group(1).endswith(", [2, 2], [1, 1, 1, 1], [1, 1], 1") and conv.group(2) == "f32[2,16,5,5]"
    assert re.search(r"fxpress\.quantize\(%x, [0-9.e-]+, -?\d+, -128, 127\) : i8\[2,8,9,9\]", text)
    assert q.trace[-1].stats == {"folded": 1, "float": {}}
    # numerics: within a few output steps (the calibrated output scale) of the float (BN-folded) block
    step = float(get(next(n for n in q.nodes("call_function") if "conv2d" in str(n.target)), "qparams").scale)
    with torch.no_grad():
        for (x,) in data:
            assert float((q(x) - model(x)).abs().max()) <= 3 * step


def test_folded_conv_matches_fake_quantization_within_one_step() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(6, 10, 3, padding="same", groups=2, dilation=2)).eval()
    data = _data((2, 6, 8, 8), seed=1)
    graph = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(per_channel=True), Calibrate(data=data)])
    conv = next(n for n in graph.nodes("call_function") if "conv" in str(n.target))
    assert conv.target == torch.ops.aten.conv2d.padding
    px, pw, py = get(conv.args[0], "qparams"), get(conv.args[1], "qparams"), get(conv, "qparams")
    q = fxpress.optimize(graph, [FoldQDQ()])
    assert _ops(q) == ["fxpress.quantize", "fxpress.quantized_conv2d_float"]  # the output reads it: float out
    x = data[0][0]  # inside the calibrated range: no clipping
    w = pw.fake_quantize(graph.param(conv.args[1]))
    fake = py.fake_quantize(model[0]._conv_forward(px.fake_quantize(x), w, graph.param(conv.args[2])))
    step = float(py.scale)
    assert float((q(x) - fake).abs().max()) <= step * 1.001
    with torch.no_grad():
        assert float((q(x) - model(x)).abs().max()) <= 8 * step


def test_small_cnn_int8_accuracy_and_tvm(cnn: SmallCNN, cnn_input: torch.Tensor) -> None:
    data = [(cnn_input,), *_data((2, 3, 8, 8), seed=3)]
    q = _quantize(cnn, data)
    assert q.trace[-1].stats == {"folded": 2, "float": {}}
    out_step = _output_step(q)
    with torch.no_grad():
        for (x,) in data:
            assert float((q(x) - cnn(x)).abs().max()) <= 4 * out_step
    compiled = fxpress.compile(q, target="x86", num_threads=1)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


class Mixed(nn.Module):
    """A transposed conv (no integer kernel) between two convs, one with reflect padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv2 = nn.Conv2d(4, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.up(torch.relu(self.conv1(x)))))


def test_ops_without_an_integer_kernel_stay_float_and_correct() -> None:
    torch.manual_seed(4)
    model = Mixed().eval()
    data = _data((2, 3, 6, 6), seed=4)
    q = _quantize(model, data)
    stats = q.trace[-1].stats
    assert stats["folded"] == 2  # the reflect-padded conv is a pad then a conv2d: folded
    assert list(stats["float"].values()) == ["transposed convolution: no integer kernel"]
    assert _ops(q).count("aten.conv_transpose2d.input") == 1 and _ops(q).count("fxpress.quantized_conv2d_float") == 2
    out_step = _output_step(q)
    with torch.no_grad():
        for (x,) in data:
            assert float((q(x) - model(x)).abs().max()) <= 6 * out_step
    compiled = fxpress.compile(q, target="x86", num_threads=1)
    x = data[1][0]
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


def test_dynamic_batch_conv_folds_and_runs() -> None:
    torch.manual_seed(5)
    model = ConvBNReLU().eval()
    data = _data((2, 8, 9, 9), seed=5)
    graph = fxpress.capture(model, data[0], dynamic_shapes=({0: torch.export.Dim("b")},))
    q = fxpress.optimize(graph, ["fold-bn", Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    assert "fxpress.quantized_conv2d_float(" in str(q) and "f32[s0,16,5,5]" in str(q)
    x = torch.randn(5, 8, 9, 9)
    with torch.no_grad():
        assert q(x).shape == (5, 16, 5, 5)
        assert float((q(x) - model(x)).abs().max()) < 0.2
