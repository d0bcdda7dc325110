"""fold-qdq: calibrated linears become int8 kernels; golden IR, numerics, leave-alone, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import PipelineError
from fxpress.ir.annotations import get
from fxpress.passes import Calibrate, FakeQuantize, FreezeFakeQuant, Observe
from fxpress.passes.fold_qdq import FoldQDQ
from fxpress.passes.manager import Instrument


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _data(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 32, generator=g),) for _ in range(n)]


def _quantized(model: nn.Module, data: list[tuple[torch.Tensor, ...]], **observe: object) -> fxpress.Graph:
    graph = fxpress.capture(model.eval(), data[0])
    return fxpress.optimize(graph, [Observe(per_channel=True, **observe), Calibrate(data=data), FoldQDQ()])


def _ops(graph: fxpress.Graph) -> list[str]:
    return re.findall(r"= ((?:aten|fxpress)\.[a-z_.]+)\(", str(graph))


def test_golden_linear_block() -> None:
    torch.manual_seed(0)
    q = _quantized(MLP(), _data())
    # both results are read by float ops only (the ReLU, the graph output): float-out linears, no
    # requantize-then-dequantize; the ReLU's own quantize feeds the second
    assert _ops(q) == [
        "fxpress.quantize",
        "fxpress.quantized_linear_float",
        "aten.relu",
        "fxpress.quantize",
        "fxpress.quantized_linear_float",
    ]
    assert "bn" not in str(q) and "param i8[24,32]" in str(q) and "param i32[24]" in str(q)
    assert q.trace[-1].stats == {"folded": 2, "float": {}}
    assert "quantized" in q.properties
    # the float weights are gone: int8 weights, int32 bias and the float32 output scales (x_scale * w_scale) remain
    assert all(t.dtype in (torch.int8, torch.int32, torch.float32) for t in q.params().values())
    assert sorted(str(t.dtype) for t in q.params().values()).count("torch.float32") == 2
    assert all(t.numel() in (24, 10) for t in q.params().values() if t.dtype == torch.float32)


class Chain(nn.Module):
    """Three identity linears: fc1 -> two views -> fc2, and fc3 on the same input as fc1; fc2 + fc3 in float."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(4, 4) for _ in range(3))
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.eye_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x).view(2, 2, 2)
        return self.fc2(y.view(2, 4)) + self.fc3(x)


# The one calibration batch spans [0, 2.55], so (i8 affine min/max, range widened to hold 0) every
# activation has scale 2.55 / 255 = 0.01 and zero point -128 - round(0 / 0.01) = -128, except the
# sum x + x: [0, 5.1], scale 0.02. Identity weights, symmetric: scale max|w| / 127.5 = 0.007843.
CHAIN_X = torch.tensor([[0.0, 1.0, 2.0, 2.55], [0.5, 1.5, 0.25, 0.0]])
ACT = "observe act minmax i8 affine; qparams i8 affine scale=0.01 zp=-128"
SHARED = "observe act shared; qparams i8 affine scale=0.01 zp=-128"
WEIGHT = "observe weight minmax i8 sym; qparams i8 sym scale=0.007843 zp=0"
SUM = "observe act minmax i8 affine; qparams i8 affine scale=0.02 zp=-128"

CALIBRATED = f"""\
graph(%x: f32[2,4]) {{
  %fc1.bias = param f32[4]
  %fc1.weight = param f32[4,4]  # {WEIGHT}
  %fc2.bias = param f32[4]
  %fc2.weight = param f32[4,4]  # {WEIGHT}
  %fc3.bias = param f32[4]
  %fc3.weight = param f32[4,4]  # {WEIGHT}
  %0 = aten.linear(%x, %fc1.weight, %fc1.bias) : f32[2,4]  # {ACT}
  %1 = aten.view(%0, [2, 2, 2]) : f32[2,2,2]  # {SHARED}
  %2 = aten.view(%1, [2, 4]) : f32[2,4]  # {SHARED}
  %3 = aten.linear(%2, %fc2.weight, %fc2.bias) : f32[2,4]  # {ACT}
  %4 = aten.linear(%x, %fc3.weight, %fc3.bias) : f32[2,4]  # {ACT}
  %5 = aten.add.Tensor(%3, %4) : f32[2,4]  # {SUM}
  return %5
}}"""

# Folding alone (no clean-up rule): each linear becomes quantize -> quantized_linear -> dequantize
# with the parameters above in int8 (input zero point -128, range [-128, 127]); the float weights
# give way to int8 weights, int32 biases and per-row requantization multipliers and shifts.
FOLDED = f"""\
graph(%x: f32[2,4]) {{
  %fc1_bias_i32 = param i32[4]
  %fc1_requant_mult = param i32[4]
  %fc1_requant_shift = param i32[4]
  %fc1_weight_i8 = param i8[4,4]
  %fc2_bias_i32 = param i32[4]
  %fc2_requant_mult = param i32[4]
  %fc2_requant_shift = param i32[4]
  %fc2_weight_i8 = param i8[4,4]
  %fc3_bias_i32 = param i32[4]
  %fc3_requant_mult = param i32[4]
  %fc3_requant_shift = param i32[4]
  %fc3_weight_i8 = param i8[4,4]
  %0 = fxpress.quantize(%x, 0.01, -128, -128, 127) : i8[2,4]
  %1 = fxpress.quantized_linear(%0, -128, %fc1_weight_i8, %fc1_bias_i32, %fc1_requant_mult, %fc1_requant_shift, -128) : i8[2,4]
  %2 = fxpress.dequantize(%1, 0.01, -128) : f32[2,4]  # {ACT}
  %3 = aten.view(%2, [2, 2, 2]) : f32[2,2,2]  # {SHARED}
  %4 = aten.view(%3, [2, 4]) : f32[2,4]  # {SHARED}
  %5 = fxpress.quantize(%4, 0.01, -128, -128, 127) : i8[2,4]
  %6 = fxpress.quantized_linear(%5, -128, %fc2_weight_i8, %fc2_bias_i32, %fc2_requant_mult, %fc2_requant_shift, -128) : i8[2,4]
  %7 = fxpress.dequantize(%6, 0.01, -128) : f32[2,4]  # {ACT}
  %8 = fxpress.quantize(%x, 0.01, -128, -128, 127) : i8[2,4]
  %9 = fxpress.quantized_linear(%8, -128, %fc3_weight_i8, %fc3_bias_i32, %fc3_requant_mult, %fc3_requant_shift, -128) : i8[2,4]
  %10 = fxpress.dequantize(%9, 0.01, -128) : f32[2,4]  # {ACT}
  %11 = aten.add.Tensor(%7, %10) : f32[2,4]  # {SUM}
  return %11
}}"""

# The clean-up rules: hoist moves fc2's quantize above both views (%5 -> view(view(q(%2)))), where
# it meets fc1's dequantize with the same parameters and cancels, so fc1's int8 result is viewed
# and read by fc2 as is; dedupe gives fc3 the quantize of %x that fc1 reads (%8 -> %0); float-out
# turns fc2 and fc3, read only by the float add, into float-out linears (their requantization
# parameters go, an output scale x_scale * w_scale per row comes). The moved views are new nodes
# and carry no annotations (those of the float views they replace went with them).
CLEANED = f"""\
graph(%x: f32[2,4]) {{
  %fc1_bias_i32 = param i32[4]
  %fc1_requant_mult = param i32[4]
  %fc1_requant_shift = param i32[4]
  %fc1_weight_i8 = param i8[4,4]
  %fc2_bias_i32 = param i32[4]
  %fc2_out_scale = param f32[4]
  %fc2_weight_i8 = param i8[4,4]
  %fc3_bias_i32 = param i32[4]
  %fc3_out_scale = param f32[4]
  %fc3_weight_i8 = param i8[4,4]
  %0 = fxpress.quantize(%x, 0.01, -128, -128, 127) : i8[2,4]
  %1 = fxpress.quantized_linear(%0, -128, %fc1_weight_i8, %fc1_bias_i32, %fc1_requant_mult, %fc1_requant_shift, -128) : i8[2,4]
  %2 = aten.view(%1, [2, 2, 2]) : i8[2,2,2]
  %3 = aten.view(%2, [2, 4]) : i8[2,4]
  %4 = fxpress.quantized_linear_float(%3, -128, %fc2_weight_i8, %fc2_bias_i32, %fc2_out_scale) : f32[2,4]  # {ACT}
  %5 = fxpress.quantized_linear_float(%0, -128, %fc3_weight_i8, %fc3_bias_i32, %fc3_out_scale) : f32[2,4]  # {ACT}
  %6 = aten.add.Tensor(%4, %5) : f32[2,4]  # {SUM}
  return %6
}}"""


def test_golden_folding_then_clean_up() -> None:
    graph = fxpress.optimize(fxpress.capture(Chain().eval(), (CHAIN_X,)), [Observe(), Calibrate(data=[(CHAIN_X,)])])
    assert str(graph) == CALIBRATED
    folded = fxpress.optimize(graph, "fold-qdq{cleanup=[]}")
    assert str(folded) == FOLDED
    out = fxpress.optimize(graph, "fold-qdq")
    assert str(out) == CLEANED
    assert out.trace[-1].modified is True and out.trace[-1].stats == {"folded": 3, "float": {}}
    # identity weights: round(1 / (1 / 127.5)) = 128, clamped to 127; zero biases; 0.01 * (1 / 127.5) per row
    assert torch.equal(out.param("fc1_weight_i8"), torch.eye(4, dtype=torch.int8) * 127)
    assert torch.equal(out.param("fc3_bias_i32"), torch.zeros(4, dtype=torch.int32))
    torch.testing.assert_close(out.param("fc2_out_scale"), torch.full((4,), 0.01 / 127.5), rtol=1e-6, atol=0)
    # the integers by hand: x on its grid is n = x / 0.01 (exact here); fc1 requantizes 127 * n at
    # 0.01 * (1 / 127.5) / 0.01; fc2 and fc3 are float-out: accumulator * 0.01 * (1 / 127.5)
    n = torch.round(CHAIN_X / 0.01)
    fc1 = torch.round(127 * n / 127.5)
    torch.testing.assert_close(out(CHAIN_X), 127 * (fc1 + n) * (0.01 / 127.5), rtol=1e-6, atol=1e-6)


def test_clean_up_rules_are_options() -> None:
    graph = fxpress.optimize(fxpress.capture(Chain().eval(), (CHAIN_X,)), [Observe(), Calibrate(data=[(CHAIN_X,)])])
    no_hoist = fxpress.optimize(graph, [FoldQDQ(cleanup=("cancel", "dedupe", "float-out"))])
    # the views stay float, so float ops alone read fc1's result: fc1 goes float-out too, and fc2
    # quantizes the viewed floats again; dedupe still gives fc3 fc1's quantize of %x
    assert _ops(no_hoist) == [
        "fxpress.quantize",
        "fxpress.quantized_linear_float",
        "aten.view",
        "aten.view",
        "fxpress.quantize",
        "fxpress.quantized_linear_float",
        "fxpress.quantized_linear_float",
    ]
    assert FoldQDQ(cleanup=("hoist",)).text() == "fold-qdq{cleanup=[hoist]}"
    with pytest.raises(PipelineError, match=r"unknown clean-up rules \['bogus'\]; valid: hoist, cancel"):
        fxpress.optimize(graph, "fold-qdq{cleanup=[hoist,bogus]}")


def test_matches_fake_quantization_within_one_step() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 48)).eval()
    data = [(torch.randn(16, 64),) for _ in range(8)]
    graph = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(per_channel=True), Calibrate(data=data)])
    lin = next(n for n in graph.nodes("call_function") if "linear" in str(n.target))
    px, pw, py = get(lin.args[0], "qparams"), get(lin.args[1], "qparams"), get(lin, "qparams")
    q = fxpress.optimize(graph, [FoldQDQ()])
    x = data[0][0]  # inside the calibrated range: no clipping
    w = pw.fake_quantize(graph.param(lin.args[1]))
    fake = py.fake_quantize(nn.functional.linear(px.fake_quantize(x), w, graph.param(lin.args[2])))
    step = float(py.scale)
    assert float((q(x) - fake).abs().max()) <= step * 1.001
    with torch.no_grad():
        assert float((q(x) - model(x)).abs().max()) <= 8 * step  # and close to float overall


def test_int8_graph_is_bit_exact_in_tvm() -> None:
    torch.manual_seed(2)
    q = _quantized(MLP(), _data())
    compiled = fxpress.compile(q, target="x86", num_threads=1)
    x = torch.randn(16, 32) * 2
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


def test_leaves_alone_what_it_cannot_fold() -> None:
    torch.manual_seed(3)
    q = _quantized(MLP(), _data(), skip=("fc2",))
    assert q.trace[-1].stats["folded"] == 1
    assert list(q.trace[-1].stats["float"]) == ["linear_1"]
    assert "no quantization parameters" in q.trace[-1].stats["float"]["linear_1"]
    assert _ops(q).count("aten.linear") == 1


def test_nothing_to_fold_is_not_a_change() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.ReLU()).eval()  # no integer kernel
    x = torch.randn(2, 3, 8, 8)
    graph = fxpress.optimize(fxpress.capture(model, (x,)), [Observe(), Calibrate(data=[(x,)])])
    out = fxpress.optimize(graph, [FoldQDQ()])
    assert out.trace[-1].modified is False
    assert str(out) == str(graph)


def test_order_error_before_anything_runs() -> None:
    graph = fxpress.capture(MLP().eval(), _data()[0])
    with pytest.raises(PipelineError, match=r"fold-qdq requires \['calibrated'\]; ran so far: \['observe'\]"):
        fxpress.optimize(graph, "observe,fold-qdq")
    with pytest.raises(PipelineError, match="run calibrate before it"):
        fxpress.optimize(graph, "fold-qdq")


class _Started(Instrument):
    def __init__(self) -> None:
        self.started: list[str] = []

    def before_pass(self, p: object, graph: fxpress.Graph) -> None:
        self.started.append(str(getattr(p, "name", p)))


def test_fake_quantized_graph_is_refused_before_anything_runs() -> None:
    """fold-qdq forbids 'fake-quantized': the trained parameters live in the fake-quantize ops until frozen."""
    data = _data(2)
    graph = fxpress.capture(MLP().eval(), data[0])
    started = _Started()
    with pytest.raises(PipelineError) as info:
        fxpress.optimize(graph, [Observe(), Calibrate(data=data), FakeQuantize(), FoldQDQ()], instruments=[started])
    assert started.started == []  # observe, calibrate and fake-quantize did not run either
    msg = str(info.value)
    assert "fold-qdq cannot run on a graph that is ['fake-quantized'] (made by fake-quantize)" in msg
    assert "run freeze-fake-quant before it" in msg
    # with freeze-fake-quant between them the same order runs and folds both linears
    out = fxpress.optimize(graph, [Observe(), Calibrate(data=data), FakeQuantize(), FreezeFakeQuant(), FoldQDQ()])
    assert _ops(out).count("fxpress.quantized_linear") + _ops(out).count("fxpress.quantized_linear_float") == 2
