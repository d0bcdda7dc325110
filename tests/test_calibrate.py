"""calibrate: golden IR, activation parameters bit-exact against torch.ao on the eager values, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import observer as tq

import fxpress
from fxpress.errors import InputError, PassError, PipelineError
from fxpress.ir import annotations as notes
from fxpress.passes.calibrate import Calibrate


class Net(nn.Module):
    """conv -> in-place relu -> max-pool -> flatten -> two linears -> residual add -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(16, 8)
        self.skip = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.flatten(nn.functional.max_pool2d(self.relu(self.conv(x)), 2), 1)
        return self.fc2(self.fc1(f) + self.skip(f))

    def values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The eager value of every observed node, by node name (the oracle)."""
        with torch.no_grad():
            conv = self.conv(x)
            relu = torch.relu(conv)
            flat = torch.flatten(nn.functional.max_pool2d(relu, 2), 1)
            fc1, skip = self.fc1(flat), self.skip(flat)
            add = fc1 + skip
            return {
                "x": x,
                "conv2d": conv,
                "relu_": relu,
                "linear": fc1,
                "linear_1": skip,
                "add": add,
                "linear_2": self.fc2(add),
            }


def _batches(n: int = 4, batch: int = 2) -> list[tuple[torch.Tensor]]:
    return [
        (torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(100 + i)) * (1 + i),) for i in range(n)
    ]


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def observed(net: Net) -> fxpress.Graph:
    return fxpress.optimize(fxpress.capture(net, (torch.randn(2, 3, 4, 4),)), "observe")


GOLDEN = """\
graph(%x: f32[2,3,4,4]) {
  %conv.bias = param f32[4]
  %conv.weight = param f32[4,3,3,3]  # observe weight minmax i8 sym; qparams i8 sym scale=0.001506 zp=0
  %fc1.bias = param f32[8]
  %fc1.weight = param f32[8,16]  # observe weight minmax i8 sym; qparams i8 sym scale=0.00194 zp=0
  %fc2.bias = param f32[3]
  %fc2.weight = param f32[3,8]  # observe weight minmax i8 sym; qparams i8 sym scale=0.002772 zp=0
  %skip.bias = param f32[8]
  %skip.weight = param f32[8,16]  # observe weight minmax i8 sym; qparams i8 sym scale=0.00196 zp=0
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1]) : f32[2,4,4,4]  # observe act minmax i8 affine; qparams i8 affine scale=0.03922 zp=0
  %1 = aten.relu_(%0) : f32[2,4,4,4]  # observe act minmax i8 affine; qparams i8 affine scale=0.01951 zp=-128
  %2 = aten.max_pool2d(%1, [2, 2]) : f32[2,4,2,2]  # observe act shared; qparams i8 affine scale=0.01951 zp=-128
  %3 = aten.flatten.using_ints(%2, 1) : f32[2,16]  # observe act shared; qparams i8 affine scale=0.01951 zp=-128
  %4 = aten.linear(%3, %fc1.weight, %fc1.bias) : f32[2,8]  # observe act minmax i8 affine; qparams i8 affine scale=0.02005 zp=27
  %5 = aten.linear(%3, %skip.weight, %skip.bias) : f32[2,8]  # observe act minmax i8 affine; qparams i8 affine scale=0.01939 zp=-11
  %6 = aten.add.Tensor(%4, %5) : f32[2,8]  # observe act minmax i8 affine; qparams i8 affine scale=0.02927 zp=-22
  %7 = aten.linear(%6, %fc2.weight, %fc2.bias) : f32[2,3]  # observe act minmax i8 affine; qparams i8 affine scale=0.007996 zp=-14
  return %7
}"""


def test_golden_ir(observed):
    out = fxpress.optimize(observed, Calibrate(data=_batches()))
    assert str(out) == GOLDEN
    assert out.properties == frozenset({"observed", "calibrated"})
    assert out.trace[-1].pipeline == "calibrate"
    assert out.trace[-1].modified is True and out.trace[-1].stats == {"batches": 4, "observed": 7}


ORACLES = {
    "minmax": lambda: tq.MinMaxObserver(dtype=torch.qint8),
    "histogram": lambda: tq.HistogramObserver(dtype=torch.qint8),
    "moving-average": lambda: tq.MovingAverageMinMaxObserver(dtype=torch.qint8, averaging_constant=0.01),
}


@pytest.mark.parametrize("kind", list(ORACLES))
def test_params_match_torch_on_the_eager_values(net, kind):
    """Each activation's parameters equal torch.ao's observer fed the same eager tensors, bit for bit."""
    graph = fxpress.capture(net, (torch.randn(2, 3, 4, 4),))
    data = _batches(5)
    out = fxpress.optimize(graph, [f"observe{{observer={kind}}}", Calibrate(data=data)])
    oracles = {name: ORACLES[kind]() for name in net.values(data[0][0])}
    for (x,) in data:
        for name, value in net.values(x).items():
            oracles[name](value)
    nodes = {n.name: n for n in out.nodes()}
    for name, oracle in oracles.items():
        qp = notes.get(nodes[name], "qparams")
        scale, zero_point = oracle.calculate_qparams()
        assert torch.equal(qp.scale, scale), name
        assert torch.equal(qp.zero_point, zero_point.long()), name
    for shared in ("max_pool2d", "flatten"):  # shared slots carry their input's parameters
        assert notes.get(nodes[shared], "qparams") == notes.get(nodes["relu_"], "qparams")


def test_in_place_ops_do_not_hide_values(observed):
    """relu_ overwrites the conv output in place: the conv's observer must see it before, negatives included."""
    out = fxpress.optimize(observed, Calibrate(data=_batches()))
    conv = notes.get(next(n for n in out.nodes() if n.name == "conv2d"), "qparams")
    relu = notes.get(next(n for n in out.nodes() if n.name == "relu_"), "qparams")
    assert conv.zero_point.item() > -128  # a range below zero
    assert relu.zero_point.item() == -128  # [0, max]


def test_fake_quantized_values_within_half_a_step(net, observed):
    data = _batches()
    out = fxpress.optimize(observed, Calibrate(data=data))
    nodes = {n.name: n for n in out.nodes()}
    for (x,) in data:
        for name, value in net.values(x).items():
            qp = notes.get(nodes[name], "qparams")
            assert (qp.fake_quantize(value) - value).abs().max() <= qp.scale / 2 + 1e-6, name


def test_same_data_twice_changes_nothing(observed):
    once = fxpress.optimize(observed, Calibrate(data=_batches()))
    twice = fxpress.optimize(once, Calibrate(data=_batches()))
    assert twice.trace[-1].modified is False and str(twice) == str(once)
    other = fxpress.optimize(once, Calibrate(data=_batches(2)))
    assert other.trace[-1].modified is True and str(other) != str(once)


def test_the_callers_graph_is_not_changed(observed):
    """Annotations live in node.meta, which fx copies shallowly: a pass must not write through to its input."""

    def snapshot(graph: fxpress.Graph) -> dict[str, dict]:
        return {n.name: dict(n.meta.get("fxpress", {})) for n in graph.nodes()}

    before = snapshot(observed)
    once = fxpress.optimize(observed, Calibrate(data=_batches()))
    assert snapshot(observed) == before
    after_once = snapshot(once)
    fxpress.optimize(once, Calibrate(data=_batches(2)))  # other data: other parameters, on a copy
    assert snapshot(once) == after_once


def test_limit(observed):
    limited = fxpress.optimize(observed, Calibrate(data=_batches(4), limit=2))
    assert limited.trace[-1].stats["batches"] == 2
    assert limited.trace[-1].pipeline == "calibrate{limit=2}"
    assert str(limited) == str(fxpress.optimize(observed, Calibrate(data=_batches(2))))


def test_a_generator_and_a_dynamic_batch(net):
    graph = fxpress.capture(net, (torch.randn(2, 3, 4, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    observed = fxpress.optimize(graph, "observe")
    out = fxpress.optimize(observed, Calibrate(data=((torch.randn(n, 3, 4, 4),) for n in (2, 5, 3))))
    assert out.trace[-1].stats["batches"] == 3 and "calibrated" in out.properties
    with pytest.raises(
        InputError, match=r"got torch.float32 \[2, 1, 4, 4\], but the graph takes torch.float32 \[\*, 3, 4, 4\]"
    ):
        fxpress.optimize(observed, Calibrate(data=[(torch.randn(2, 1, 4, 4),)]))


def test_observe_again_drops_the_calibration(observed):
    calibrated = fxpress.optimize(observed, Calibrate(data=_batches()))
    again = fxpress.optimize(calibrated, "observe")
    assert again.trace[-1].modified is True
    assert again.properties == frozenset({"observed"})
    assert str(again) == str(observed)  # activation parameters gone, weight parameters as before
    with pytest.raises(PipelineError, match=r"calibrate requires \['observed'\].*run observe before it"):
        fxpress.optimize(fxpress.capture(Net().eval(), (torch.randn(2, 3, 4, 4),)), Calibrate(data=_batches()))


def test_leaves_alone_a_graph_with_nothing_observed():
    class Plain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x) * 2

    observed = fxpress.optimize(fxpress.capture(Plain(), (torch.randn(3),)), "observe")
    out = fxpress.optimize(observed, Calibrate(data=[(torch.randn(3),)]))
    assert out.trace[-1].modified is False and str(out) == str(observed)


# -- bad input ----------------------------------------------------------------------------


def test_no_data(observed):
    with pytest.raises(PassError, match=r"calibrate needs calibration data.*Calibrate\(data="):
        fxpress.optimize(observed, "calibrate")
    with pytest.raises(PipelineError, match="cannot be given as text"):
        fxpress.optimize(observed, "calibrate{data=images}")
    with pytest.raises(PipelineError, match="limit must be >= 0"):
        fxpress.optimize(observed, "calibrate{limit=-1}")


def test_empty_data(observed):
    with pytest.raises(PassError, match="calibration data is empty"):
        fxpress.optimize(observed, Calibrate(data=[]))
    exhausted = iter(_batches())
    list(exhausted)
    with pytest.raises(PassError, match="exhausted generator"):
        fxpress.optimize(observed, Calibrate(data=exhausted))


def test_not_an_iterable():
    with pytest.raises(ValueError, match="iterable of input tuples"):
        Calibrate(data=3)


@pytest.mark.parametrize(
    "item, error, match",
    [
        (torch.randn(2, 3, 4, 4), InputError, r"data\[1\] is a Tensor, not a tuple of tensors.*data=\[\(x,\) for x"),
        ((torch.randn(2, 3, 4, 4), 3), InputError, r"data\[1\] is a tuple holding non-tensors"),
        (
            (torch.randn(2, 3, 4, 4), torch.tensor([1])),
            InputError,
            r"2 tensors but the graph takes 1 inputs \(x\).*no labels",
        ),
        (
            (torch.randn(2, 3, 5, 5),),
            InputError,
            r"input 'x': got torch.float32 \[2, 3, 5, 5\], but the graph takes torch.float32 \[2, 3, 4, 4\]",
        ),
        ((torch.randn(3, 3, 4, 4),), InputError, r"\[3, 3, 4, 4\], but the graph takes torch.float32 \[2, 3, 4, 4\]"),
        (
            (torch.randn(2, 3, 4, 4).double(),),
            InputError,
            r"got torch.float64 \[2, 3, 4, 4\], but the graph takes torch.float32",
        ),
    ],
)
def test_bad_items(observed, item, error, match):
    with pytest.raises(error, match=match):
        fxpress.optimize(observed, Calibrate(data=[_batches(1)[0], item]))


class LogNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.log(self.fc1(x)))  # log of a negative: NaN; of zero: -Inf


def test_nan_names_the_node():
    torch.manual_seed(3)
    graph = fxpress.optimize(fxpress.capture(LogNet().eval(), (torch.randn(2, 4),)), "observe")
    with pytest.raises(PassError, match=r"NaN in the output of log") as info:
        fxpress.optimize(graph, Calibrate(data=[(torch.randn(2, 4),)]))
    assert "%1 = aten.log(%0)" in str(info.value) and "^^^" in str(info.value)
    assert "test_calibrate.py" in str(info.value)  # the model's source line
    assert "While executing" not in str(info.value)  # no fx interpreter noise


def test_inf_names_the_node(observed):
    bad = torch.randn(2, 3, 4, 4)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(PassError, match=r"Inf in the output of x") as info:
        fxpress.optimize(observed, Calibrate(data=[(bad,)]))
    assert "which is to be quantized" in str(info.value)
