"""The contract every registered pass keeps (see fxpress/passes/base.py)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import BNMLP, SmallCNN
from torch import nn

import fxpress
import fxpress.passes
from fxpress.errors import PipelineError
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.passes import PASSES, Pass, parse_pipeline
from fxpress.passes.calibrate import Calibrate
from fxpress.passes.distill import Distil
from fxpress.passes.fine_tune import FineTune
from fxpress.passes.qat import Qat

KEBAB = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
TESTS = Path(__file__).parent


def _pass_classes_in_package() -> set[type[Pass]]:
    found = set()
    for info in pkgutil.walk_packages(fxpress.passes.__path__, "fxpress.passes."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Pass) and obj is not Pass and obj.__module__ == module.__name__:
                found.add(obj)
    return found


def test_every_pass_class_is_registered():
    assert _pass_classes_in_package() == set(PASSES.values())


@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_shape(name):
    cls = PASSES[name]
    assert cls.name == name
    assert KEBAB.fullmatch(name), name
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen, f"{cls.__name__} must be a frozen dataclass"
    p = cls()  # every option has a default, so the bare name is a valid pipeline
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.__setattr__("anything", 1)
    for facts in (cls.requires, cls.establishes, cls.invalidates):  # declared once: fxpress.ir.properties
        assert isinstance(facts, frozenset) and all(isinstance(f, Property) for f in facts), facts
    assert parse_pipeline(p.text()) == [p]
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert doc.startswith(f"{name}: "), "a pass module opens with a docstring naming the pass"
    for part in ("Requires:", "Numerics:", "Leaves alone:"):
        assert part in doc, f"{cls.__module__} docstring lacks {part!r}"


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_has_a_test_file(name):
    path = TESTS / f"test_{name.replace('-', '_')}.py"
    assert path.is_file(), f"pass {name!r} has no tests: add {path.name} (golden IR, numerics, leave-alone)"


class Everything(nn.Module):
    """Something for every pass to do: BN to fold, a constant weight expression, dead code."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = SmallCNN()
        self.mlp = BNMLP()
        self.w = nn.Parameter(torch.randn(4, 10))
        self.scale = nn.Parameter(torch.rand(4, 1))

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.cnn(x) + nn.functional.linear(self.mlp(v), self.w * self.scale)


@pytest.fixture(scope="module")
def graphs() -> list[fxpress.Graph]:
    torch.manual_seed(5)
    model = Everything().eval()
    x, v = torch.randn(2, 3, 8, 8), torch.randn(2, 16)
    return [
        fxpress.capture(model, (x, v)),
        fxpress.capture(model, (x, v), dynamic_shapes=({0: torch.export.Dim("b")}, {0: torch.export.Dim("b")})),
    ]


PREREQUISITES = {  # pipelines establishing `requires`
    "calibrate": "observe",
    "fold-qdq": "observe,calibrate",
    "fake-quantize": "observe,calibrate",
    "freeze-fake-quant": "observe,calibrate,fake-quantize",
    "qat": "observe,calibrate",
}
LOSSY = {
    "fold-qdq",
    "prune-channels",
    "sparsify",
    "fine-tune",
    "distil",
    "fake-quantize",
    "freeze-fake-quant",
    "qat",
    "share-weights",
    "low-rank",
    "cast-bf16",
}  # passes whose output legitimately differs from their input
RETRAINS = {"fine-tune", "distil", "qat"}  # training again on its own output changes it again (and honestly says so)
TRAINS_QPARAMS = {"qat"}  # its quantization parameters are trained with the weights
ONE_SHOT = {"freeze-fake-quant"}  # consumes the property it requires: a second run is refused by name


def _structure(graph: fxpress.Graph) -> str:
    """The printed IR without its annotation comments."""
    return "\n".join(line.split("  # ")[0] for line in str(graph).splitlines())


def _under_test(name: str, graph: fxpress.Graph) -> Pass | str:
    """The pass by name, or built in Python where an option has no text form (calibration data)."""
    if name == "fine-tune":
        return FineTune(data=[(*graph.example_inputs, torch.tensor([0, 3]))], lr=0.01)
    if name == "distil":  # the graph as its own teacher: the hard labels still move it
        return Distil(teacher=graph, data=[(*graph.example_inputs, torch.tensor([0, 3]))], lr=0.01)
    if name == "qat":
        return Qat(data=[(*graph.example_inputs, torch.tensor([0, 3]))], lr=0.01)
    if name == "annotate-sparsity":  # the zoo's weights are dense: annotate them all
        return "annotate-sparsity{max-density=1.0}"
    return Calibrate(data=[graph.example_inputs]) if name == "calibrate" else name


def _prepare(name: str, graph: fxpress.Graph) -> fxpress.Graph:
    if name not in PREREQUISITES:
        return graph
    return fxpress.optimize(graph, [_under_test(p, graph) for p in PREREQUISITES[name].split(",")])


@pytest.mark.parametrize("name", sorted(PASSES))
def test_second_run_changes_nothing(name, graphs):
    assert not PASSES[name].requires or name in PREREQUISITES, f"give {name} a prerequisite pipeline"
    for graph in graphs:
        graph = _prepare(name, graph)
        first = fxpress.optimize(graph, _under_test(name, graph))
        assert first.trace[-1].modified, f"{name} has work in this graph; the first run must change it"
        if name in ONE_SHOT:
            with pytest.raises(PipelineError, match=f"{name} requires"):
                fxpress.optimize(first, _under_test(name, graph))
            continue
        second = fxpress.optimize(first, _under_test(name, graph))
        if name in RETRAINS:  # the same IR; qat's trained scales (printed annotations) move again too
            same = _structure if name in TRAINS_QPARAMS else str
            assert second.trace[-1].modified and same(second) == same(first)
            continue
        assert second.trace[-1].modified is False, f"{name} reported a change on its own output"
        assert str(second) == str(first)
        x, v = graph.example_inputs
        torch.testing.assert_close(second(x, v), (first if name in LOSSY else graph)(x, v), rtol=1e-5, atol=1e-5)


# rewrites weights from the very parameters `observed`/`calibrated` name (fold-qdq), adds them as tensors
# (fake-quantize), or trains weights and those parameters together and writes both back (qat)
CONSUMES_WEIGHT_FACTS = {"fold-qdq", "fake-quantize", "qat"}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_a_pass_that_rewrites_weights_invalidates_what_depends_on_them(name, graphs):
    graph = _prepare(name, graphs[0])
    out = fxpress.optimize(graph, _under_test(name, graph))
    before, after = graph.params(), out.params()
    new = set(after) - set(before)
    changed = {k for k in set(after) & set(before) if not torch.equal(before[k], after[k])}
    if (new or changed) and name not in CONSUMES_WEIGHT_FACTS:
        assert PASSES[name].invalidates >= WEIGHT_DEPENDENT, f"{name} rewrites weights {sorted(new | changed)[:3]}"
