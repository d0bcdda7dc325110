"""capture: nn.Module + example inputs -> Graph, without touching the user's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SmallCNN, randomize_bn
from torch import nn

import fxpress
from fxpress.errors import CaptureError, FxpressError


def test_capture_runs_like_eager(cnn, cnn_input):
    graph = fxpress.capture(cnn, (cnn_input,))
    assert isinstance(graph, fxpress.Graph)
    assert graph.input_names == ["x"]
    assert graph.model_name == "SmallCNN"
    assert graph.properties == frozenset()
    assert graph.trace == []
    graph.verify()
    assert not cnn.training  # eval stays eval
    other = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(graph(other), cnn(other), rtol=0, atol=1e-6)


def test_capture_accepts_a_bare_tensor(mlp, mlp_input):
    graph = fxpress.capture(mlp, mlp_input)
    torch.testing.assert_close(graph(mlp_input), mlp(mlp_input), rtol=0, atol=1e-6)


def test_capture_holds_operator_calls_only(cnn, cnn_input):
    graph = fxpress.capture(cnn, (cnn_input,))
    kinds = {n.op for n in graph.nodes()}
    assert kinds <= {"placeholder", "get_attr", "call_function", "output"}
    assert not any(name.startswith("_guards_fn") for name, _ in graph.gm.named_children())
    # params are get_attr nodes reaching real tensors, not lifted inputs
    assert set(graph.params()) >= {"conv.weight", "conv.bias", "bn.running_mean", "fc.weight"}
    torch.testing.assert_close(graph.param("conv.weight"), cnn.conv.weight, rtol=0, atol=0)


def test_capture_leaves_the_users_module_untouched(cnn_input):
    model = SmallCNN().train()  # training mode on purpose: capture must not flip it
    model.conv.weight.requires_grad_(True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    ids = {k: id(v) for k, v in tensors.items()}
    graph = fxpress.capture(model, (cnn_input,))

    assert model.training and all(m.training for m in model.modules())
    assert model.conv.weight.requires_grad
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # bit-identical, running stats included
    assert {k: id(v) for k, v in (dict(model.named_parameters()) | dict(model.named_buffers())).items()} == ids
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    # the graph owns its tensors: editing them cannot reach the model
    with torch.no_grad():
        graph.param("conv.weight").add_(1.0)
    assert torch.equal(model.conv.weight, before["conv.weight"])


def test_capture_uses_eval_mode_semantics():
    model = nn.Sequential(nn.Linear(4, 6), randomize_bn(nn.BatchNorm1d(6)), nn.Dropout(0.5)).train()
    x = torch.randn(8, 4)
    graph = fxpress.capture(model, (x,))
    expected = model.eval()(x)
    torch.testing.assert_close(graph(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(graph(x), graph(x), rtol=0, atol=0)  # no dropout randomness


def test_dynamic_batch_runs_at_other_sizes(mlp, mlp_input):
    batch = torch.export.Dim("batch")
    graph = fxpress.capture(mlp, (mlp_input,), dynamic_shapes=({0: batch},))
    assert str(graph).startswith("graph(%x: f32[s0,16]) {")
    for n in (2, 7, 33):
        x = torch.randn(n, 16)
        torch.testing.assert_close(graph(x), mlp(x), rtol=0, atol=1e-5)


def test_static_capture_records_static_shapes(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    assert str(graph).startswith("graph(%x: f32[4,16]) {")


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # the line the error must point at
            return x * 2
        return x - 1


def test_data_dependent_control_flow_names_construct_and_source_line():
    with pytest.raises(CaptureError) as info:
        fxpress.capture(_DataDependent(), (torch.randn(3),))
    msg = str(info.value)
    assert "data-dependent control flow" in msg
    assert "_DataDependent" in msg
    source = Path(__file__).read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "if x.sum() > 0:" in text)
    assert f"{__file__}:{line}" in msg
    assert "if x.sum() > 0:" in msg
    assert "torch.where" in msg or "torch.cond" in msg  # says what to do
    assert isinstance(info.value, FxpressError)


@pytest.mark.parametrize(
    ("bad", "type_name"),
    [(3, "int"), ("three", "str"), ({"a": 1}, "dict"), (2.5, "float"), (None, "NoneType")],
)
def test_non_tensor_example_input_names_index_and_type(bad, type_name):
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x

    with pytest.raises(CaptureError, match=rf"example input 1 is a {type_name}\b"):
        fxpress.capture(TwoInputs(), (torch.randn(2), bad))


@pytest.mark.parametrize(("bad", "type_name"), [(3, "int"), ("x", "str"), ({"x": torch.randn(2)}, "dict")])
def test_example_inputs_that_are_not_a_sequence(bad, type_name):
    with pytest.raises(CaptureError, match=rf"example_inputs must be a tensor or a tuple of tensors, got {type_name}$"):
        fxpress.capture(nn.Identity(), bad)


@pytest.mark.parametrize("bad", [lambda x: x, "resnet18", torch.randn(2), None])
def test_not_a_module(bad):
    with pytest.raises(CaptureError, match=r"model must be a torch.nn.Module, got \w+"):
        fxpress.capture(bad, (torch.randn(2),))


def test_conflicting_dynamic_shapes_are_a_capture_error():
    class Fixed(nn.Module):
        def forward(self, x):
            return x.reshape(2, 8)  # the batch is not free

    with pytest.raises(CaptureError, match="dynamic_shapes"):
        fxpress.capture(Fixed(), (torch.randn(2, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
