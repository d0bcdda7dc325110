"""fake-quantize and the fxpress.fake_quantize op: golden IR, values and LSQ gradients, trainability, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import BackendError, InputError, PassError, PipelineError
from fxpress.passes import Calibrate, FakeQuantize, FoldQDQ, Observe
from fxpress.quant.fake_quant import fake_quantize, lsq_grad_factor
from fxpress.quant.qat_graph import insert_fake_quant, is_fake_quant
from fxpress.quant.scheme import QScheme
from fxpress.quant.scheme import fake_quantize as reference


class Tiny(nn.Module):
    """fc's output feeds only a ReLU (float in the int8 graph); the ReLU's, through a view, feeds out (int8)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)).flatten(1))


AFTER = """\
graph(%x: f32[2,4]) {
  %fc.bias = param f32[3]
  %fc.weight = param f32[3,4]  # observe weight minmax i8 sym ch0; qparams i8 sym ch0 scale=[0.001105..0.003529] zp=0
  %fc_weight_fq_scale = param f32[3]
  %fc_weight_fq_zero_point = param f32[3]
  %out.bias = param f32[2]
  %out.weight = param f32[2,3]  # observe weight minmax i8 sym ch0; qparams i8 sym ch0 scale=[0.003922..0.004706] zp=0
  %out_weight_fq_scale = param f32[2]
  %out_weight_fq_zero_point = param f32[2]
  %relu_fq_scale = param f32[1]
  %relu_fq_zero_point = param f32[1]
  %x_fq_scale = param f32[1]
  %x_fq_zero_point = param f32[1]
  %0 = fxpress.fake_quantize(%x, %x_fq_scale, %x_fq_zero_point, -128, 127, -1, 0.04437) : f32[2,4]  # observe act minmax i8 affine; qparams i8 affine scale=0.009804 zp=-26
  %1 = fxpress.fake_quantize(%out.weight, %out_weight_fq_scale, %out_weight_fq_zero_point, -128, 127, 0, 0.05123) : f32[2,3]
  %2 = fxpress.fake_quantize(%fc.weight, %fc_weight_fq_scale, %fc_weight_fq_zero_point, -128, 127, 0, 0.04437) : f32[3,4]
  %3 = aten.linear(%0, %2, %fc.bias) : f32[2,3]  # observe act minmax i8 affine; qparams i8 affine scale=0.009155 zp=-34
  %4 = aten.relu(%3) : f32[2,3]  # observe act minmax i8 affine; qparams i8 affine scale=0.005791 zp=-128
  %5 = fxpress.fake_quantize(%4, %relu_fq_scale, %relu_fq_zero_point, -128, 127, -1, 0.05123) : f32[2,3]  # observe act minmax i8 affine; qparams i8 affine scale=0.005791 zp=-128
  %6 = aten.flatten.using_ints(%5, 1) : f32[2,3]  # observe act shared; qparams i8 affine scale=0.005791 zp=-128
  %7 = aten.linear(%6, %1, %out.bias) : f32[2,2]  # observe act minmax i8 affine; qparams i8 affine scale=0.004402 zp=-71
  return %7
}"""


def _tiny() -> Tiny:
    model = Tiny().eval()
    with torch.no_grad():  # fixed values, so the golden IR's numbers do not hang on a random stream
        model.fc.weight.copy_(torch.linspace(-0.4, 0.45, 12).reshape(3, 4))
        model.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
        model.out.weight.copy_(torch.tensor([[0.5, -0.25, 0.125], [-0.3, 0.2, 0.6]]))
        model.out.bias.copy_(torch.tensor([0.01, -0.02]))
    return model


def _calibrated(per_channel: bool = True, **observe: object) -> tuple[fxpress.Graph, torch.Tensor]:
    model = _tiny()
    x = torch.linspace(-1.0, 1.5, 8).reshape(2, 4)
    graph = fxpress.capture(model, (x,))
    return fxpress.optimize(graph, [Observe(per_channel=per_channel, **observe), Calibrate(data=[(x,)])]), x


def test_golden_ir():
    """What fold-qdq quantizes is wrapped: x, both weights, and the ReLU that (through the shared
    flatten) feeds ``out``; fc's output (read only by the ReLU) and out's (the graph's) are not:
    fold-qdq gives those float readers the unrounded accumulator. LSQ factors 1/sqrt(n * 127).

    By hand: x spans [-1, 1.5]: scale 2.5 / 255 = 0.009804, zp -128 + round(1 / 0.009804) = -26; fc
    weight row 1 spans [-0.0909, 0.1409]: 0.1409 / 127.5 = 0.001105, row 2 reaches 0.45: 0.003529;
    n = 4 features of x (0.04437), 3 per out-weight channel and 3 ReLU features (0.05123).
    """
    calibrated, _ = _calibrated()
    out = fxpress.optimize(calibrated, [FakeQuantize()])
    assert str(out) == AFTER
    assert out.trace[-1].stats == {"fake_quantized": 4}
    assert {"observed", "calibrated", "fake-quantized"} <= set(out.properties)
    assert lsq_grad_factor(4, 127) == pytest.approx(0.04437, abs=1e-5)
    assert "fake_quantize" not in str(calibrated)  # the given graph is untouched


def test_fake_quantized_graph_rounds_where_the_int8_graph_does():
    """The trainable graph computes what fold-qdq's integer ops will: equal up to the int32 bias rounding,
    except where that rounding tips the ReLU's value into the next step."""
    x = torch.randn(64, 4)
    graph = fxpress.capture(_tiny(), (x,))
    calibrated = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=[(x,)])])
    fq = fxpress.optimize(calibrated, [FakeQuantize()])
    int8 = fxpress.optimize(calibrated, [FoldQDQ()])
    relu_step = float(next(n for n in calibrated.nodes() if n.name == "relu").meta["fxpress"]["qparams"].scale)
    diff = (fq(x) - int8(x)).abs()
    assert float((diff <= 1e-4).float().mean()) > 0.9
    assert float(diff.max()) <= relu_step * 0.6 * 3 + 1e-4  # one step on each of out's 3 inputs, |w| <= 0.6
    assert float((fq(x) - calibrated(x)).abs().max()) > 1e-3  # rounding happens


@pytest.mark.parametrize(
    "scheme",
    [
        QScheme("int8"),
        QScheme("uint8", symmetric=True),
        QScheme("int8", symmetric=True, axis=0),
        QScheme("int8", symmetric=True, axis=1, quant_min=-7, quant_max=7),
        QScheme("int8", symmetric=True, quant_min=-1, quant_max=1),
    ],
    ids=lambda s: s.text(),
)
def test_op_values_equal_the_scheme_reference(scheme):
    x = torch.randn(6, 5) * 3
    channels = x.shape[scheme.axis] if scheme.axis is not None else 1
    scale = torch.rand(channels) * 0.05 + 0.01
    zero = torch.full((channels,), scheme.symmetric_zero_point if scheme.symmetric else 3, dtype=torch.int64)
    qmin, qmax = scheme.qrange
    axis = -1 if scheme.axis is None else scheme.axis
    got = fake_quantize(x, scale, zero.float(), qmin, qmax, axis, 1.0)
    assert torch.equal(got, reference(x, scale, zero, scheme))


def test_lsq_gradients_by_hand():
    """STE for x; LSQ's step-size and LSQ+'s offset gradients, times the gradient factor."""
    x = torch.tensor([0.26, -0.9, 0.04, 0.51], requires_grad=True)  # v = [3, -9 -> below, 0, 5 -> above]
    scale = torch.tensor([0.1], requires_grad=True)
    zero = torch.tensor([0.0], requires_grad=True)
    y = fake_quantize(x, scale, zero, -4, 4, -1, 0.5)
    assert torch.allclose(y, torch.tensor([0.3, -0.4, 0.0, 0.4]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    ratio = torch.tensor([2.6, -9.0, 0.4, 5.1])
    ds = torch.tensor([3 - 2.6, -4.0, 0 - 0.4, 4.0])  # inside: round(x/s) - x/s; below: qmin - z; above: qmax - z
    assert torch.allclose(scale.grad, (ds.sum() * 0.5).reshape(1), atol=1e-5), (scale.grad, ratio)
    assert torch.allclose(zero.grad, torch.tensor([(-0.1 - 0.1) * 0.5]))  # -s at the two clipped elements


def test_per_channel_gradients_reduce_over_the_other_axes():
    x = torch.randn(3, 4, requires_grad=True)
    scale = torch.full((4,), 0.02, requires_grad=True)
    fake_quantize(x, scale, torch.zeros(4), -128, 127, 1, 1.0).sum().backward()
    ratio = x.detach() / 0.02
    expected = (torch.round(ratio) - ratio).sum(0)
    assert scale.grad.shape == (4,) and torch.allclose(scale.grad, expected, atol=1e-4)


def test_learn_makes_parameters_and_fixed_makes_buffers():
    calibrated, _ = _calibrated()
    learned = fxpress.optimize(calibrated, [FakeQuantize(learn=True)])
    names = {n for n, _ in learned.gm.named_parameters()}
    assert {"x_fq_scale", "x_fq_zero_point", "fc_weight_fq_scale"} <= names
    assert "fc_weight_fq_zero_point" not in names  # symmetric weights keep zero point 0
    fixed = fxpress.optimize(calibrated, [FakeQuantize(learn=False)])
    assert not any("_fq_" in n for n, _ in fixed.gm.named_parameters())
    assert {"x_fq_scale", "fc_weight_fq_scale"} <= {n for n, _ in fixed.gm.named_buffers()}
    pow2, _ = _calibrated(power_of_two=True)
    stays = fxpress.optimize(pow2, [FakeQuantize(learn=True)])
    assert not any(n.endswith("_fq_scale") for n, _ in stays.gm.named_parameters())  # powers of two stay fixed


def test_gradients_reach_weights_and_scales():
    calibrated, x = _calibrated()
    fq = fxpress.optimize(calibrated, [FakeQuantize()])
    params = dict(fq.gm.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    fq.gm(x).sum().backward()
    assert params["fc.weight"].grad is not None and params["fc.weight"].grad.abs().sum() > 0
    assert params["relu_fq_scale"].grad is not None and params["x_fq_zero_point"].grad is not None


def test_no_observers_is_refused_naming_observe_and_calibrate():
    graph = fxpress.capture(Tiny().eval(), (torch.randn(2, 4),))
    with pytest.raises(PipelineError, match="fake-quantize requires"):
        fxpress.optimize(graph, [FakeQuantize()])
    with pytest.raises(InputError, match="run observe and calibrate first"):
        insert_fake_quant(graph.copy(), learn=True)


def test_observed_but_not_calibrated_names_calibrate():
    graph = fxpress.capture(Tiny().eval(), (torch.randn(2, 4),))
    observed = fxpress.optimize(graph, [Observe()])
    with pytest.raises(InputError, match="run calibrate before fake-quantize"):
        insert_fake_quant(observed.copy(), learn=True)


def test_fold_qdq_and_compile_refuse_a_graph_still_fake_quantized():
    calibrated, _ = _calibrated()
    fq = fxpress.optimize(calibrated, [FakeQuantize()])
    with pytest.raises(PipelineError, match="run freeze-fake-quant before it"):  # the contract, before anything runs
        fxpress.optimize(fq, [FoldQDQ()])
    stripped = fq.copy()  # the property lost (a hand-edited graph): the pass itself still refuses
    stripped.properties = stripped.properties - {"fake-quantized"}
    with pytest.raises(PassError, match="run freeze-fake-quant before fold-qdq"):
        fxpress.optimize(stripped, [FoldQDQ()])
    with pytest.raises(BackendError, match="freeze-fake-quant"):
        fxpress.compile(fq, target="x86-64")
    assert sum(is_fake_quant(n) for n in fq.nodes()) == 4


def test_pipeline_text():
    calibrated, _ = _calibrated()
    out = fxpress.optimize(calibrated, "fake-quantize{learn=false}")
    assert out.pipeline.endswith("fake-quantize{learn=false}")


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.fc(h) + h


def test_a_float_output_is_rounded_for_its_integer_readers_only():
    """As fold-qdq does: the linear reads the layer norm's int8 value, the residual add its float one."""
    x = torch.randn(8, 4)
    graph = fxpress.capture(Residual().eval(), (x,))
    calibrated = fxpress.optimize(graph, [Observe(), Calibrate(data=[(x,)])])
    fq = fxpress.optimize(calibrated, [FakeQuantize()])
    norm = next(n for n in fq.nodes() if n.name == "layer_norm")
    linear = next(n for n in fq.nodes() if n.name == "linear")
    add = next(n for n in fq.nodes() if n.name == "add")
    assert is_fake_quant(linear.args[0]) and linear.args[0].args[0] is norm
    assert norm in add.args and not any(is_fake_quant(a) for a in add.args)  # the add is float in int8 too
    int8 = fxpress.optimize(calibrated, [FoldQDQ()])
    assert float((fq(x) - int8(x)).abs().max()) < 1e-4  # the same rounding points (up to the int32 bias)
