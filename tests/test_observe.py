"""observe: golden IR, weight parameters against torch.ao, selection options, annotation checks, leave-alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import observer as tq

import fxpress
from fxpress.errors import PipelineError, VerifyError
from fxpress.ir import annotations as notes
from fxpress.passes.observe import Observe
from fxpress.quant import ObserverSlot, ObserverSpec, QScheme, QuantParams


class ConvBlock(nn.Module):
    """conv -> relu -> max-pool -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(y, 1))


class Attention(nn.Module):
    """Single-head self-attention with a residual."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.35, -1)
        return self.o(torch.matmul(att, v)) + x


def _conv_block() -> fxpress.Graph:
    torch.manual_seed(0)
    return fxpress.capture(ConvBlock().eval(), (torch.randn(1, 3, 4, 4),))


def _attention() -> fxpress.Graph:
    torch.manual_seed(0)
    return fxpress.capture(Attention().eval(), (torch.randn(1, 4, 8),))


CONV_BLOCK = """\
graph(%x: f32[1,3,4,4]) {
  %conv.bias = param f32[4]
  %conv.weight = param f32[4,3,3,3]  # observe weight minmax i8 sym; qparams i8 sym scale=0.001506 zp=0
  %fc.bias = param f32[5]
  %fc.weight = param f32[5,16]  # observe weight minmax i8 sym; qparams i8 sym scale=0.001891 zp=0
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1]) : f32[1,4,4,4]  # observe act minmax i8 affine
  %1 = aten.relu(%0) : f32[1,4,4,4]  # observe act minmax i8 affine
  %2 = aten.max_pool2d(%1, [2, 2]) : f32[1,4,2,2]  # observe act shared
  %3 = aten.flatten.using_ints(%2, 1) : f32[1,16]  # observe act shared
  %4 = aten.linear(%3, %fc.weight, %fc.bias) : f32[1,5]  # observe act minmax i8 affine
  return %4
}"""

CONV_BLOCK_PER_CHANNEL_WEIGHTS = [
    "  %conv.weight = param f32[4,3,3,3]  # observe weight minmax i8 sym ch0; qparams i8 sym ch0 scale=[0.001442..0.001506] zp=0",
    "  %fc.weight = param f32[5,16]  # observe weight minmax i8 sym ch0; qparams i8 sym ch0 scale=[0.001616..0.001891] zp=0",
]

ATTENTION = """\
graph(%x: f32[1,4,8]) {
  %k.bias = param f32[8]
  %k.weight = param f32[8,8]  # observe weight minmax i8 sym pow2; qparams i8 sym pow2 scale=0.003906 zp=0
  %o.bias = param f32[8]
  %o.weight = param f32[8,8]  # observe weight minmax i8 sym pow2; qparams i8 sym pow2 scale=0.003906 zp=0
  %q.bias = param f32[8]
  %q.weight = param f32[8,8]  # observe weight minmax i8 sym pow2; qparams i8 sym pow2 scale=0.003906 zp=0
  %v.bias = param f32[8]
  %v.weight = param f32[8,8]  # observe weight minmax i8 sym pow2; qparams i8 sym pow2 scale=0.003906 zp=0
  %0 = aten.linear(%x, %q.weight, %q.bias) : f32[1,4,8]  # observe act histogram i8 affine pow2
  %1 = aten.linear(%x, %k.weight, %k.bias) : f32[1,4,8]  # observe act histogram i8 affine pow2
  %2 = aten.linear(%x, %v.weight, %v.bias) : f32[1,4,8]  # observe act histogram i8 affine pow2
  %3 = aten.transpose.int(%1, -2, -1) : f32[1,8,4]  # observe act shared
  %4 = aten.matmul(%0, %3) : f32[1,4,4]  # observe act histogram i8 affine pow2
  %5 = aten.mul.Tensor(%4, 0.35) : f32[1,4,4]
  %6 = aten.softmax.int(%5, -1) : f32[1,4,4]  # observe act histogram i8 affine pow2
  %7 = aten.matmul(%6, %2) : f32[1,4,8]  # observe act histogram i8 affine pow2
  %8 = aten.linear(%7, %o.weight, %o.bias) : f32[1,4,8]  # observe act histogram i8 affine pow2
  %9 = aten.add.Tensor(%8, %x) : f32[1,4,8]  # observe act histogram i8 affine pow2
  return %9
}"""


def test_golden_conv_block():
    graph = _conv_block()
    out = fxpress.optimize(graph, "observe")
    assert str(out) == CONV_BLOCK
    assert out.properties == frozenset({"observed"})
    assert out.trace[-1].modified is True
    assert out.trace[-1].stats == {"activations": 4, "shared": 2, "weights": 2}
    x = out.inputs[0]  # the printer shows no input annotations: check the input's slot directly
    assert notes.get(x, "observe") == ObserverSlot("activation", ObserverSpec("minmax", QScheme()))


def test_golden_per_channel():
    out = fxpress.optimize(_conv_block(), "observe{per-channel=true}")
    lines = str(out).splitlines()
    assert [ln for ln in lines if "weight = param" in ln] == CONV_BLOCK_PER_CHANNEL_WEIGHTS


def test_golden_attention():
    out = fxpress.optimize(_attention(), "observe{observer=histogram,power-of-two=true}")
    assert str(out) == ATTENTION


def test_observing_changes_no_value():
    graph = _attention()
    out = fxpress.optimize(graph, "observe")
    x = torch.randn(1, 4, 8)
    assert torch.equal(out(x), graph(x))


# -- weights: parameters computed here, bit-exact against torch.ao ------------------------


class Convs(nn.Module):
    """Regular, grouped and depthwise convolutions, then a matmul with a constant right operand."""

    def __init__(self) -> None:
        super().__init__()
        self.regular = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.proj = nn.Parameter(torch.randn(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.grouped(self.regular(x)))
        return torch.matmul(y.mean(1), self.proj)


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_params_match_torch(per_channel):
    torch.manual_seed(1)
    graph = fxpress.capture(Convs().eval(), (torch.randn(2, 3, 6, 6),))
    out = fxpress.optimize(graph, Observe(per_channel=per_channel))
    for target, axis in (("regular.weight", 0), ("grouped.weight", 0), ("depthwise.weight", 0), ("proj", 1)):
        node = next(n for n in out.nodes("get_attr") if n.target == target)
        qp = notes.get(node, "qparams")
        weight = out.param(node)
        if per_channel:
            theirs = tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
            assert qp.axis == axis and qp.scale.shape == (weight.shape[axis],)
        else:
            theirs = tq.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
            assert qp.axis is None and qp.scale.shape == (1,)
        theirs(weight)
        scale, zero_point = theirs.calculate_qparams()
        assert torch.equal(qp.scale, scale.reshape(-1)) and torch.equal(qp.zero_point, zero_point.reshape(-1).long())
        shape = [1] * weight.dim()
        shape[axis] = -1 if per_channel else 1
        err = (qp.fake_quantize(weight) - weight).abs()  # each weight moves by at most half a step
        assert bool((err <= qp.scale.reshape(shape) / 2 + 1e-6).all())


def test_mse_weight_observer():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(256, 16)).eval()
    with torch.no_grad():
        model[0].weight[3, 7] = 1.0  # an outlier far from the other weights of channel 3
    graph = fxpress.capture(model, (torch.randn(2, 256),))
    minmax = fxpress.optimize(graph, "observe{per-channel=true}")
    mse = fxpress.optimize(graph, "observe{per-channel=true,weight-observer=mse}")
    w = graph.param("0.weight")
    a, b = (notes.get(next(n for n in g.nodes() if n.target == "0.weight"), "qparams") for g in (mse, minmax))
    a_err = ((a.fake_quantize(w) - w) ** 2).sum(1)
    b_err = ((b.fake_quantize(w) - w) ** 2).sum(1)
    assert bool((a_err <= b_err * 1.001).all())  # never worse than min-max, per channel
    assert "observe weight mse i8 sym ch0" in str(mse)


def test_power_of_two_weights():
    out = fxpress.optimize(_conv_block(), "observe{per-channel=true,power-of-two=true}")
    for node in out.nodes("get_attr"):
        qp = notes.get(node, "qparams")
        if qp is not None:
            assert torch.equal(torch.log2(qp.scale), torch.log2(qp.scale).round())
            weight = out.param(node)
            assert bool(((qp.fake_quantize(weight) - weight).abs() <= qp.scale.max() / 2 + 1e-7).all())


# -- selection -------------------------------------------------------------------------


def _observed(graph: fxpress.Graph) -> set[str]:
    return {str(n.target) if n.op == "get_attr" else n.name for n in graph.nodes() if notes.get(n, "observe")}


def test_skip_by_module_path():
    out = fxpress.optimize(_conv_block(), "observe{skip=[^fc$]}")
    assert _observed(out) == {"x", "conv.weight", "conv2d", "relu", "max_pool2d", "flatten"}


def test_only_and_ops():
    conv_only = {"x", "conv.weight", "conv2d", "relu", "max_pool2d", "flatten"}
    assert _observed(fxpress.optimize(_conv_block(), "observe{only=[conv]}")) == conv_only
    assert _observed(fxpress.optimize(_conv_block(), "observe{ops=[conv2d]}")) == conv_only
    linear_only = {"flatten", "fc.weight", "linear"}
    assert _observed(fxpress.optimize(_conv_block(), "observe{ops=[linear]}")) == linear_only
    assert _observed(fxpress.optimize(_conv_block(), "observe{skip=[conv2d]}")) == linear_only  # by node name


def test_reobserving_replaces_the_configuration():
    graph = fxpress.optimize(_conv_block(), "observe")
    again = fxpress.optimize(graph, "observe{ops=[linear],dtype=uint8}")
    assert again.trace[-1].modified is True
    assert _observed(again) == {"flatten", "fc.weight", "linear"}
    assert "observe act minmax u8 affine" in str(again) and "i8 affine" not in str(again)


@pytest.mark.parametrize(
    "text, match",
    [
        ("observe{observer=max}", "observer must be one of"),
        ("observe{dtype=int4}", "dtype must be one of"),
        ("observe{weight-observer=kl}", "weight-observer must be one of"),
        ("observe{per-channel=true,weight-observer=entropy}", "per-tensor only"),
        ("observe{ops=[softmax]}", "not quantizable"),
        ("observe{skip=[(]}", "bad regex"),
        ("observe{observer=moving-average,averaging-constant=2.0}", "averaging constant"),
        ("observe{observer=percentile,percentile=10.0}", "percentile must be in"),
        ("observe{weight-observer=percentile,percentile=101}", r"percentile must be in \(50, 100\], got 101.0"),
        ("observe{percentile=50}", "percentile must be in"),  # out of range whichever observers use it
        ("observe{dtype=uint8,symmetric=true,reduce-range=true}", "outside"),
    ],
)
def test_bad_options(text, match):
    with pytest.raises(PipelineError, match=match):
        fxpress.optimize(_conv_block(), text)


def test_round_trip_text():
    p = Observe(per_channel=True, observer="entropy", skip=("fc", "head.*"))
    assert p.text() == "observe{per-channel=true,observer=entropy,skip=[fc,head.*]}"
    assert fxpress.passes.parse_pipeline(p.text()) == [p]


# -- leave alone --------------------------------------------------------------------------


class NothingToQuantize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.sin(x) * 2 + 1).reshape(-1)


def test_leaves_alone_a_graph_without_quantizable_ops():
    graph = fxpress.capture(NothingToQuantize(), (torch.randn(2, 3),))
    out = fxpress.optimize(graph, "observe")
    assert out.trace[-1].modified is False
    assert out.trace[-1].stats == {"activations": 0, "shared": 0, "weights": 0}
    assert str(out) == str(graph) and "#" not in str(out)


def test_leaves_integer_adds_alone():
    class IndexMath(nn.Module):
        def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return x[i + i]

    graph = fxpress.capture(IndexMath(), (torch.randn(5, 3), torch.tensor([0, 1])))
    out = fxpress.optimize(graph, "observe")
    assert out.trace[-1].modified is False and "#" not in str(out)


# -- annotation checks: the verifier catches inconsistent parameters -------------------------


def _with(note, target: str = "conv.weight") -> fxpress.Graph:
    graph = _conv_block()
    node = next(n for n in graph.nodes() if str(n.target) == target or n.name == target)
    notes.annotate(node, note)
    return graph


S8_CH0 = QScheme("int8", True, 0)


@pytest.mark.parametrize(
    "note, match",
    [
        (QuantParams(S8_CH0, torch.ones(3), torch.zeros(3, dtype=torch.int64)), "3 per-channel scales for 4 channels"),
        (QuantParams(QScheme(), torch.ones(2), torch.zeros(2, dtype=torch.int64)), "per-tensor parameters with 2"),
        (QuantParams(QScheme(), -torch.ones(1), torch.zeros(1, dtype=torch.int64)), "positive and finite"),
        (QuantParams(QScheme(), torch.ones(1), torch.tensor([200])), "outside the integer range"),
        (QuantParams(QScheme("int8", True), torch.ones(1), torch.tensor([3])), "needs zero point 0"),
        (QuantParams(QScheme(power_of_two=True), torch.tensor([0.3]), torch.tensor([0])), "not powers of two"),
        (QuantParams(QScheme(axis=5), torch.ones(1), torch.zeros(1, dtype=torch.int64)), "axis 5"),
        (QuantParams(QScheme(), torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)), "float32"),
    ],
)
def test_verifier_rejects_inconsistent_params(note, match):
    with pytest.raises(VerifyError, match=match):
        _with(note).verify()


def test_verifier_rejects_inconsistent_slots():
    spec = ObserverSpec("minmax", QScheme())
    with pytest.raises(VerifyError, match="not a parameter"):
        _with(ObserverSlot("weight", spec), "conv2d").verify()
    with pytest.raises(VerifyError, match=r"input \(args\[0\]\) is not observed"):
        _with(ObserverSlot("activation", shared=True), "max_pool2d").verify()
    with pytest.raises(ValueError, match="has a spec unless"):
        ObserverSlot("activation")


def test_params_text_rounds():
    qp = QuantParams(S8_CH0, torch.tensor([0.0123456, 0.5]), torch.zeros(2, dtype=torch.int64))
    assert qp.text() == "qparams i8 sym ch0 scale=[0.01235..0.5] zp=0"
    assert qp == QuantParams(S8_CH0, torch.tensor([0.0123456, 0.5]), torch.zeros(2, dtype=torch.int64))
    assert qp != QuantParams(S8_CH0, torch.tensor([0.0123457, 0.5]), torch.zeros(2, dtype=torch.int64))


def test_weight_percentile_observer_takes_the_percentile_option():
    """weight-observer=percentile ranges each weight at the given percentile (it used 99.99 whatever was given)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(256, 8)).eval()
    graph = fxpress.capture(model, (torch.randn(2, 256),))
    w = graph.param("0.weight")
    for p in (99.0, 99.99):
        out = fxpress.optimize(graph, f"observe{{per-channel=true,weight-observer=percentile,percentile={p}}}")
        node = next(n for n in out.nodes("get_attr") if n.target == "0.weight")
        spec = ObserverSpec("percentile", QScheme("int8", True, 0), percentile=p)
        observer = spec.make()
        observer.observe(w)
        assert notes.get(node, "qparams") == observer.qparams()  # the pass's parameters are the observer's, exactly
        assert notes.get(node, "observe") == ObserverSlot("weight", spec)
    # leave alone: the default percentile prints no option and gives the same parameters as before
    assert fxpress.optimize(graph, "observe{weight-observer=percentile,percentile=99.99}").pipeline == (
        "observe{weight-observer=percentile}"
    )
