"""fxpress.auto without compiling: budgets, methods and their pipeline text, the Pareto set, and bad input.

Every bad input is refused before any kernel is compiled, with a message that
names what to fix: calibration batches that do not match the graph's inputs
(count, shape, dtype), an evaluation function that raises or returns NaN (the
candidate's pipeline named), a budget that cannot be read.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fxpress
from fxpress.auto import AutoError, Budget, Method, Plan, Point, optimize_text, pareto, pipeline_text
from fxpress.auto.evaluate import default_evaluation
from fxpress.auto.layers import find_layers


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


@pytest.fixture(scope="module")
def tiny() -> tuple[fxpress.Graph, list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model = Tiny().eval()
    batches = [(torch.randn(4, 1, 6, 6),) for _ in range(4)]
    return fxpress.capture(model, batches[0]), batches


def test_budget_text() -> None:
    assert Budget.parse("accuracy>=0.99") == Budget(accuracy=0.99)
    assert Budget.parse("latency<=2.5ms") == Budget(latency_ms=2.5)
    assert Budget.parse("latency <= 300us").latency_ms == pytest.approx(0.3)
    assert Budget.parse("size<=2KiB") == Budget(size_bytes=2048)
    assert Budget.parse("size<=1.5MB").size_bytes == 1_500_000
    with pytest.raises(AutoError, match="accuracy takes a floor"):
        Budget.parse("accuracy<=0.9")
    with pytest.raises(AutoError, match=r"write accuracy>=0\.99"):
        Budget.parse("fast please")
    with pytest.raises(AutoError, match="exactly one budget"):
        Budget(accuracy=0.9, latency_ms=3.0)


def test_budget_shortfall_and_rank() -> None:
    fast = Point("a", {}, 8, accuracy=0.98, size_bytes=100, estimated_ms=1.0)
    slow = Point("b", {}, 8, accuracy=0.995, size_bytes=300, estimated_ms=3.0)
    floor = Budget(accuracy=0.99)
    assert not floor.meets(fast) and floor.meets(slow)
    assert floor.shortfall(fast) == pytest.approx(0.01 / 0.99)
    ceiling = Budget(latency_ms=2.0)
    assert ceiling.meets(fast) and ceiling.shortfall(slow) == pytest.approx(0.5)
    assert min([fast, slow], key=Budget(size_bytes=1000).rank) is slow  # most accurate within the size


def test_pareto_by_hand() -> None:
    a = Point("a", {}, 8, 0.99, 100, 2.0)
    b = Point("b", {}, 8, 0.98, 100, 1.0)
    c = Point("c", {}, 8, 0.97, 100, 1.5)  # beaten by b on all three
    d = Point("d", {}, 8, 0.97, 50, 3.0)  # the smallest: kept
    assert [p.pipeline for p in pareto([a, b, c, d])] == ["b", "a", "d"]


def test_methods_apply_and_parse(tiny: tuple[fxpress.Graph, list[tuple[torch.Tensor, ...]]]) -> None:
    graph, batches = tiny
    conv, fc1, fc2 = find_layers(graph, batches[0])
    assert (conv.ident, fc1.ident, fc2.ident) == ("conv", "fc1", "fc2")
    assert fc1.input_shape == (4, 288) and conv.weight_shape == (8, 1, 3, 3)
    assert Method.parse("prune=0.25+int8") == Method("prune=0.25", "int8")
    assert Method("none", "dynamic").applies(conv) == "dynamic int8 is for linears"
    assert Method("sparse=16x1@0.5").applies(fc2) == "weight [4, 32] does not divide into 16x1 blocks"
    assert Method("sparse=2:4").applies(fc1) is None
    with pytest.raises(AutoError, match="unknown transform"):
        Method("prune-half")


def test_pipeline_text_reproduces_the_plan(tiny: tuple[fxpress.Graph, list[tuple[torch.Tensor, ...]]]) -> None:
    graph, batches = tiny
    layers = find_layers(graph, batches[0])
    plan = Plan({"conv": Method("none", "int8"), "fc1": Method("sparse=2:4", "dynamic")}, weight_bits=4)
    text = pipeline_text(plan, layers)
    assert text == (
        "sparsify{pattern=2:4,layers=^(?:fc1)$},"
        "observe{per-channel=true,weight-bits=4,skip=[^fc2$],dynamic=[^fc1$]},calibrate,fold-qdq"
    )
    before = str(graph)
    out = optimize_text(graph, text, batches)
    assert str(graph) == before  # the user's graph is never changed
    ops = [str(n.target) for n in out.nodes("call_function")]
    assert any("dynamic_quantized_linear" in t for t in ops)
    assert any("quantized_conv2d" in t for t in ops)
    assert sum("aten.linear" in t for t in ops) == 1  # fc2 stays float
    sparse = optimize_text(graph, text.split(",observe")[0], batches)  # the sparsify step alone
    w = sparse.param("fc1.weight")
    assert float((w.reshape(-1, 4) == 0).sum(1).min()) >= 2  # 2 of every 4 inputs are zero
    assert torch.equal(sparse.param("fc2.weight"), graph.param("fc2.weight"))  # other layers untouched


def test_default_evaluation(tiny: tuple[fxpress.Graph, list[tuple[torch.Tensor, ...]]]) -> None:
    graph, batches = tiny
    cosine = default_evaluation(graph, batches[2:], "cosine")
    top1 = default_evaluation(graph, batches[2:], "top1")
    assert cosine(graph) == pytest.approx(1.0, abs=1e-9) and top1(graph) == 1.0
    int8 = optimize_text(graph, "observe{per-channel=true},calibrate,fold-qdq", batches[:2])
    assert 0.9 < cosine(int8) < 1.0


def _auto(graph: fxpress.Graph, batches: list, tmp_path, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("budget", "accuracy>=0.9")
    return fxpress.auto(graph, batches, methods=["int8"], cache_dir=tmp_path, progress_bar=False, **kw)


def test_calibration_count_shape_dtype(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph, batches = tiny
    with pytest.raises(AutoError, match=r"calibration: data\[1\] has 2 tensors but the graph takes 1 inputs \(x\)"):
        _auto(graph, [batches[0], (batches[1][0], batches[1][0])], tmp_path)
    with pytest.raises(
        AutoError,
        match=r"input 'x': got torch.float32 \[4, 1, 5, 5\], but the graph takes torch.float32 \[4, 1, 6, 6\]",
    ):
        _auto(graph, [(torch.randn(4, 1, 5, 5),)] * 2, tmp_path)
    with pytest.raises(AutoError, match=r"got torch.float64 \[4, 1, 6, 6\]"):
        _auto(graph, [(torch.randn(4, 1, 6, 6, dtype=torch.float64),)] * 2, tmp_path)
    with pytest.raises(AutoError, match="got one tensor"):
        _auto(graph, torch.randn(4, 1, 6, 6), tmp_path)
    with pytest.raises(AutoError, match="held_out: data"):
        _auto(graph, batches, tmp_path, held_out=[(torch.randn(4, 6, 6),)])


def _quantized(graph: fxpress.Graph) -> bool:
    return any("fxpress" in str(n.target) for n in graph.nodes("call_function"))


def test_evaluation_that_raises_names_the_candidate(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph, batches = tiny

    def evaluate(g: fxpress.Graph) -> float:
        if _quantized(g):
            raise ZeroDivisionError("no labels left")
        return 1.0

    with pytest.raises(
        AutoError,
        match=r"raised ZeroDivisionError: no labels left -- on the candidate 'observe\{per-channel=true,skip=\[",
    ) as info:
        _auto(graph, batches, tmp_path, evaluate=evaluate)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_evaluation_that_returns_nan(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph, batches = tiny
    with pytest.raises(AutoError, match=r"returned nan on the candidate .*observe.*finite float"):
        _auto(graph, batches, tmp_path, evaluate=lambda g: math.nan if _quantized(g) else 1.0)
    with pytest.raises(AutoError, match=r"returned 'good' \(str\)"):
        _auto(graph, batches, tmp_path, evaluate=lambda g: "good")


def test_bad_arguments(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph, batches = tiny
    with pytest.raises(AutoError, match="captured fxpress Graph"):
        fxpress.auto(Tiny(), batches, budget="accuracy>=0.9")
    with pytest.raises(AutoError, match="give held_out"):
        _auto(graph, batches[:1], tmp_path)
    with pytest.raises(AutoError, match=r"weight_bits must lie in 2\.\.8"):
        _auto(graph, batches, tmp_path, weight_bits=(1,))


def test_latency_graph_must_be_the_same_model(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph, batches = tiny
    torch.manual_seed(1)  # other weights than the fixture's (seed 0): another model
    other = fxpress.capture(Tiny().eval(), (torch.randn(1, 1, 6, 6),))
    with pytest.raises(AutoError, match=r"latency_graph is not the model `graph` holds: its layer 'conv'"):
        _auto(graph, batches, tmp_path, latency_graph=other)
