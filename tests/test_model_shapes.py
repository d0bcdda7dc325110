"""Models whose forward() is shaped unusually: dict and nested outputs, keyword-only arguments, ops TVM lacks.

Issue 20's bad inputs: each is either handled (a compiled module returns a dict where the model did) or a
clear fxpress error that names what to change (a keyword-only argument without a default; an op TVM's
importer has no converter for, with the node, the model's source line and the fallbacks), never an
importer traceback.
"""

from __future__ import annotations

import collections
import importlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import BackendError, CaptureError

tvm_compile = importlib.import_module("fxpress.backends.tvm.compile")  # the package exports a function `compile`

pytestmark = pytest.mark.tvm

Pair = collections.namedtuple("Pair", "low high")


class Head(nn.Module):
    """A linear layer whose forward() returns `kind` of structure."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> object:
        y = self.fc(x)
        if self.kind == "dict":
            return {"logits": y, "probs": y.softmax(-1)}
        if self.kind == "nested":
            return {"a": y, "b": [y + 1, (y * 2,)]}
        return Pair(y.clamp(max=0), y.clamp(min=0))


def _same(a: object, b: object) -> None:
    """`a` and `b` have the same nesting (container types and keys) and equal tensors (numpy or torch)."""
    if isinstance(a, dict | tuple | list):
        assert type(a).__name__ == type(b).__name__, (type(a), type(b))
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, tuple | list):
        assert isinstance(b, tuple | list) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _same(u, v)
    else:
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["dict", "nested", "namedtuple"])
def test_compiled_module_returns_the_models_own_output_structure(kind, tmp_path):
    model = Head(kind).eval()
    x = torch.randn(3, 6)
    module = fxpress.compile(fxpress.capture(model, (x,)))
    _same(module(x), model(x))
    module.save(str(tmp_path / "art"))
    loaded = fxpress.load(str(tmp_path / "art"))(x.numpy())  # torch-free runtime: numpy leaves, same nesting
    _same(loaded, model(x))
    if kind == "dict":
        assert isinstance(loaded["probs"], np.ndarray)


def test_transformers_model_output_comes_back_as_a_dict():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 8))
    out = fxpress.compile(fxpress.capture(model, (ids,)))(ids)
    ref = model(ids)
    assert isinstance(out, dict) and list(out) == ["last_hidden_state", "pooler_output"]
    torch.testing.assert_close(out["last_hidden_state"], ref.last_hidden_state, rtol=1e-4, atol=1e-4)


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, *, scale: float = 2.0) -> torch.Tensor:
        return self.fc(x) * scale


class KeywordOnlyRequired(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * mask


def test_keyword_only_argument_with_a_default_is_captured_at_its_default():
    model = KeywordOnly().eval()
    x = torch.randn(2, 6)
    torch.testing.assert_close(fxpress.compile(fxpress.capture(model, (x,)))(x), model(x), rtol=1e-5, atol=1e-6)


def test_keyword_only_argument_without_a_default_names_it_and_the_fix():
    with pytest.raises(CaptureError, match=r"keyword-only argument\(s\) \['mask'\] without a default") as err:
        fxpress.capture(KeywordOnlyRequired(), (torch.randn(2, 6),))
    assert "mask=mask" in str(err.value)


def test_wrong_number_of_example_inputs_names_forwards_parameters():
    with pytest.raises(CaptureError, match=r"takes 1 positional input\(s\) \(\['x'\]\), but 2 example input"):
        fxpress.capture(KeywordOnly(), (torch.randn(2, 6), torch.randn(2, 6)))


class Bessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.special.bessel_j0(y) + torch.cummax(y, 1).values  # two ops TVM 0.27 has no converter for


def test_unsupported_op_names_every_op_its_node_source_line_and_fallbacks():
    graph = fxpress.capture(Bessel().eval(), (torch.randn(2, 6),))
    with pytest.raises(BackendError) as err:
        fxpress.compile(graph)
    text = str(err.value)
    assert text.startswith("unsupported op special_bessel_j0.default at node %special_bessel_j0")
    assert "cummax.default (node %cummax)" in text
    assert "test_model_shapes.py" in text and "torch.special.bessel_j0(y)" in text  # the model's source line
    assert "target='eager'" in text and "backend='fxpress'" in text  # says which fallbacks exist
    assert err.value.node == "special_bessel_j0"
    assert err.value.__cause__ is None  # found before the importer ran: no importer traceback behind it


def test_unsupported_op_falls_back_to_eager_under_torch_compile():
    model = Bessel().eval()
    x = torch.randn(2, 6)
    with pytest.warns(Warning, match="unsupported op special_bessel_j0.default"):
        out = torch.compile(model, backend="fxpress")(x)
    torch.testing.assert_close(out, model(x))


def test_a_failing_converter_names_the_node_it_was_converting(monkeypatch):
    real = tvm_compile.converters

    def broken(node: object, importer: object) -> object:
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(tvm_compile, "converters", lambda *a, **k: {**real(*a, **k), "_softmax.default": broken})
    graph = fxpress.capture(Head("dict").eval(), (torch.randn(3, 6),))
    with pytest.raises(
        BackendError, match=r"converting node %_softmax \(_softmax.default\) for TVM failed: IndexError"
    ):
        fxpress.compile(graph)


class ScalarScale(nn.Module):
    """DeBERTa-v2's attention scale: a 0-d tensor made in forward(), a constant once fold-constants runs."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        q = self.q(x).view(2, 8, 4, 8).transpose(1, 2).reshape(-1, 8, 8)
        return q / torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * 3) * t


def test_zero_dim_constants_and_inputs_keep_their_rank(tmp_path):
    model = ScalarScale().eval()
    x, t = torch.randn(2, 8, 32), torch.tensor(0.5)  # a 0-d input too
    module = fxpress.compile(fxpress.optimize(fxpress.capture(model, (x, t)), "default"))
    torch.testing.assert_close(module(x, t), model(x, t))
    module.save(str(tmp_path / "art"))
    np.testing.assert_allclose(fxpress.load(str(tmp_path / "art"))(x.numpy(), t.numpy()), model(x, t).detach().numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_int8_layers_with_a_dynamic_batch_warn_that_they_run_slow():
    from fxpress.errors import PerformanceWarning
    from fxpress.passes import Calibrate, FoldQDQ, Observe

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    batch = ({0: torch.export.Dim("batch")},)
    for dynamic, expected in ((batch, 1), (None, 0)):
        graph = fxpress.capture(model, (x,), dynamic_shapes=dynamic)
        int8 = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=[(x,)]), FoldQDQ()])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fxpress.compile(int8)
        slow = [w for w in seen if issubclass(w.category, PerformanceWarning)]
        assert len(slow) == expected, [str(w.message) for w in seen]
        if slow:
            assert "2 integer layers" in str(slow[0].message) and "static shapes" in str(slow[0].message)
            assert slow[0].filename == __file__  # points at the caller of fxpress.compile
