"""fold-bn: golden IR, numerics against eager PyTorch, and the cases it must leave alone."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn
from torch import nn

import fxpress
from fxpress.errors import PipelineError
from fxpress.ir.capture import _strip_guards
from fxpress.ir.graph import Graph
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = randomize_bn(nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


BEFORE = """\
graph(%x: f32[1,2,5,5]) {
  %bn.bias = param f32[4]
  %bn.num_batches_tracked = param i64[]
  %bn.running_mean = param f32[4]
  %bn.running_var = param f32[4]
  %bn.weight = param f32[4]
  %conv.bias = param f32[4]
  %conv.weight = param f32[4,2,3,3]
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias) : f32[1,4,3,3]
  %1 = aten.batch_norm(%0, %bn.weight, %bn.bias, %bn.running_mean, %bn.running_var, false, 0.1, 1e-05, false) : f32[1,4,3,3]
  %2 = aten.relu(%1) : f32[1,4,3,3]
  return %2
}"""

AFTER = """\
graph(%x: f32[1,2,5,5]) {
  %conv_bias_bnfold = param f32[4]
  %conv_weight_bnfold = param f32[4,2,3,3]
  %0 = aten.conv2d(%x, %conv_weight_bnfold, %conv_bias_bnfold) : f32[1,4,3,3]
  %1 = aten.relu(%0) : f32[1,4,3,3]
  return %1
}"""


def test_golden_ir():
    graph = fxpress.capture(ConvBN().eval(), (torch.randn(1, 2, 5, 5),))
    assert str(graph) == BEFORE
    out = fxpress.optimize(graph, "fold-bn")
    assert str(out) == AFTER
    assert out.trace[-1].modified is True and out.trace[-1].stats == {"folded": 1}
    assert out.properties == frozenset({"bn-folded"})


def test_folded_weights_are_the_bn_algebra():
    model = ConvBN().eval()
    out = fxpress.optimize(fxpress.capture(model, (torch.randn(1, 2, 5, 5),)), "fold-bn")
    bn, conv = model.bn, model.conv
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * s.reshape(-1, 1, 1, 1)
    b = (conv.bias.double() - bn.running_mean.double()) * s + bn.bias.double()
    torch.testing.assert_close(out.param("conv_weight_bnfold"), w.float(), rtol=0, atol=0)
    torch.testing.assert_close(out.param("conv_bias_bnfold"), b.float(), rtol=0, atol=0)
    assert out.param("conv_weight_bnfold").dtype == torch.float32


# -- numerics ------------------------------------------------------------------


def _seq(*layers: nn.Module) -> nn.Module:
    for layer in layers:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            randomize_bn(layer)
    return nn.Sequential(*layers).eval()


class SharedConv(nn.Module):
    """One conv (one weight) used twice, each time followed by its own BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = randomize_bn(nn.BatchNorm2d(6))
        self.bn2 = randomize_bn(nn.BatchNorm2d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x * 2))


CASES = {
    "conv1d": (lambda: _seq(nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8)), (2, 3, 16), 1),
    "conv2d": (lambda: _seq(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()), (2, 3, 10, 10), 1),
    "conv2d-no-bias": (lambda: _seq(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)), (2, 3, 10, 10), 1),
    "conv2d-strided-dilated": (
        lambda: _seq(nn.Conv2d(3, 8, 3, stride=2, dilation=2, padding=2), nn.BatchNorm2d(8)),
        (2, 3, 11, 11),
        1,
    ),
    "conv2d-padding-same": (  # aten.conv2d.padding: every conv overload folds (one conv set: fxpress.ir.opsets)
        lambda: _seq(nn.Conv2d(3, 8, 3, padding="same"), nn.BatchNorm2d(8)),
        (2, 3, 9, 9),
        1,
    ),
    "grouped-conv": (lambda: _seq(nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8)), (2, 4, 9, 9), 1),
    "depthwise-conv": (lambda: _seq(nn.Conv2d(6, 6, 3, groups=6), nn.BatchNorm2d(6)), (2, 6, 9, 9), 1),
    "conv3d": (lambda: _seq(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (1, 2, 5, 6, 7), 1),
    "non-affine": (lambda: _seq(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False)), (2, 3, 8, 8), 1),
    "eps": (lambda: _seq(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=0.1)), (2, 3, 8, 8), 1),
    "linear-bn1d": (lambda: _seq(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5)), (6, 16), 1),
    "linear-no-bias-non-affine": (
        lambda: _seq(nn.Linear(16, 32, bias=False), nn.BatchNorm1d(32, affine=False)),
        (6, 16),
        1,
    ),
    "two-stages": (
        lambda: _seq(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)),
        (2, 3, 8, 8),
        2,
    ),
    "shared-conv-weight": (SharedConv, (2, 3, 6, 6), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_eager(case):
    make, shape, folds = CASES[case]
    model = make().eval()
    x = torch.randn(*shape)
    out = fxpress.optimize(fxpress.capture(model, (x,)), "fold-bn")
    assert out.trace[-1].stats == {"folded": folds}
    assert not any("batch_norm" in str(n.target) for n in out.nodes())
    for inp in (x, torch.randn(*shape) * 3):
        expected = model(inp)
        torch.testing.assert_close(out(inp), expected, rtol=0, atol=1e-5)


def test_dynamic_batch(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    out = fxpress.optimize(graph, "fold-bn")
    assert out.trace[-1].stats == {"folded": 1}
    for n in (2, 9):
        x = torch.randn(n, 16)
        torch.testing.assert_close(out(x), mlp(x), rtol=0, atol=1e-5)


def _core_aten(model: nn.Module, x: torch.Tensor) -> Graph:
    gm = torch.export.export(model, (x,)).run_decompositions().module()
    _strip_guards(gm)
    graph = Graph(gm, [x])
    graph.verify()
    return graph


def test_core_aten_form():
    """After core-ATen decomposition BN is ``_native_batch_norm_legit_no_training`` + getitem."""
    model = _seq(nn.Conv2d(4, 8, 3, groups=2, bias=False), nn.BatchNorm2d(8, affine=False))
    x = torch.randn(2, 4, 8, 8)
    graph = _core_aten(model, x)
    assert "aten._native_batch_norm_legit_no_training(" in str(graph)
    out = fxpress.optimize(graph, "fold-bn")
    assert out.trace[-1].stats == {"folded": 1}
    assert str(out).splitlines()[1:4] == [
        "  %0_bias_bnfold = param f32[8]",
        "  %0_weight_bnfold = param f32[8,2,3,3]",
        "  %0 = aten.convolution(%input_1, %0_weight_bnfold, %0_bias_bnfold, [1, 1], [0, 0], [1, 1], false, [0, 0], 2) : f32[2,8,6,6]",
    ]
    torch.testing.assert_close(out(x), model(x), rtol=0, atol=1e-5)


# -- order ---------------------------------------------------------------------


def test_after_observe_it_is_refused_before_calibrate(cnn, cnn_input):
    """fold-bn's folded weights are new parameters without observer slots: observe must run after it."""
    graph = fxpress.capture(cnn, (cnn_input,))
    data = [(cnn_input,)]
    for pipeline, history in (
        ([Observe(), FoldBatchNorm(), Calibrate(data=data), FoldQDQ()], ["observe", "fold-bn"]),
        ([FoldBatchNorm(), Calibrate(data=data)], ["observe", "fold-bn"]),  # observe ran in an earlier call
    ):
        start = graph if pipeline[0].name == "observe" else fxpress.optimize(graph, "observe")
        with pytest.raises(PipelineError) as info:
            fxpress.optimize(start, pipeline)
        assert str(info.value) == (
            f"calibrate requires ['observed']; ran so far: {history}; run observe before it "
            "('observed' was invalidated by fold-bn)"
        )
    # the order it asks for quantizes every conv and linear
    out = fxpress.optimize(graph, [FoldBatchNorm(), Observe(), Calibrate(data=data), FoldQDQ()])
    assert out.trace[-1].stats == {"folded": 2, "float": {}}
    assert out.properties == frozenset({"bn-folded", "observed", "calibrated", "quantized"})


# -- leave alone ---------------------------------------------------------------


class ConvTwoUsers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y  # folding would change the second use of y


class LinearRank3(nn.Module):
    """BatchNorm1d over dim 1 of a (N, C, L) linear output: not the linear's features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = randomize_bn(nn.BatchNorm1d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


LEAVE_ALONE = {
    "bn-after-relu": (lambda: _seq(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8)), (2, 3, 8, 8)),
    "bn-first": (lambda: _seq(nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3)), (2, 3, 8, 8)),
    "conv-with-two-users": (ConvTwoUsers, (2, 4, 6, 6)),
    "batch-statistics": (lambda: _seq(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False)), (2, 3, 8, 8)),
    "transposed-conv": (lambda: _seq(nn.ConvTranspose2d(3, 8, 3), nn.BatchNorm2d(8)), (2, 3, 6, 6)),
    "linear-rank3": (LinearRank3, (2, 4, 6)),
}


@pytest.mark.parametrize("case", list(LEAVE_ALONE))
def test_leaves_alone(case):
    make, shape = LEAVE_ALONE[case]
    model = make().eval()
    x = torch.randn(*shape)
    graph = fxpress.capture(model, (x,))
    out = fxpress.optimize(graph, FoldBatchNorm())
    assert out.trace[-1].modified is False and out.trace[-1].stats == {"folded": 0}
    assert str(out) == str(graph)
    assert "batch_norm" in str(out)
    torch.testing.assert_close(out(x), model(x), rtol=0, atol=1e-6)


def test_core_aten_transposed_convolution_left_alone():
    model = _seq(nn.ConvTranspose2d(3, 8, 3), nn.BatchNorm2d(8))
    x = torch.randn(2, 3, 6, 6)
    graph = _core_aten(model, x)
    assert ", true, [0, 0], 1) : f32[2,8,8,8]" in str(graph)  # aten.convolution(..., transposed=true, ...)
    out = fxpress.optimize(graph, "fold-bn")
    assert out.trace[-1].modified is False
    assert str(out) == str(graph)
    torch.testing.assert_close(out(x), model(x), rtol=0, atol=1e-6)
