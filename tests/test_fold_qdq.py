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
from fxpress.passes import Calibrate, Observe
from fxpress.passes.fold_qdq import FoldQDQ


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
