"""fxpress.auto end to end on a tiny CNN: measured kernels, the Pareto set, the explanation, the cache.

One search (module fixture) compiles each layer under each method once and
the whole model a few times; the later tests reuse its cache directory, so
they compile nothing: a second search must find every latency and every
candidate there (resume), give the same answer (seeded), and an unmeetable
budget must come back as ``met=False`` with the closest point named and the
Pareto set intact.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxpress
from fxpress.auto import AutoResult, BudgetNotMetWarning, optimize_text
from fxpress.auto.evaluate import default_evaluation
from fxpress.auto.latency import LatencyTable

pytestmark = pytest.mark.tvm

METHODS = ["int8", "prune=0.25+int8"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Tiny().eval()
    batches = [(torch.randn(8, 1, 6, 6),) for _ in range(4)]
    graph = fxpress.capture(model, batches[0])
    before = (str(graph), {k: v.clone() for k, v in graph.params().items()})
    cache, out = tmp_path_factory.mktemp("auto-cache"), tmp_path_factory.mktemp("auto-out")
    result = fxpress.auto(
        graph,
        batches,
        budget="accuracy>=0.995",
        methods=METHODS,
        weight_bits=(8,),
        max_candidates=8,
        confirm=2,
        cache_dir=cache,
        out_dir=out,
        progress_bar=False,
    )
    return {"graph": graph, "batches": batches, "before": before, "cache": cache, "out": out, "result": result}


def test_the_float_and_int8_baselines_are_real_numbers(search: dict[str, Any]) -> None:
    result: AutoResult = search["result"]
    float_point, int8_point = result.point("float"), result.point("int8")
    assert float_point is not None and int8_point is not None
    assert float_point.accuracy == pytest.approx(1.0, abs=1e-9)  # the float graph against itself
    assert 0.95 < int8_point.accuracy < 1.0
    assert float_point.latency_measured and int8_point.latency_measured
    assert float_point.measured_ms is not None and float_point.measured_ms > 0
    # int8 weights are a quarter of fp32 ones (plus scales and int32 biases)
    assert int8_point.size_bytes < 0.35 * float_point.size_bytes
    assert result.float_accuracy == pytest.approx(1.0, abs=1e-9)


def test_every_pareto_point_is_reproduced_by_its_pipeline_text(search: dict[str, Any]) -> None:
    result: AutoResult = search["result"]
    graph, batches = search["graph"], search["batches"]
    evaluate = default_evaluation(graph, batches[3:], "cosine")  # the default: the last quarter is held out
    assert result.pareto
    for point in result.pareto:
        optimized = optimize_text(graph, point.pipeline, batches[:3]) if point.pipeline else graph
        assert evaluate(optimized) == pytest.approx(point.accuracy, abs=1e-12)
        assert fxpress.reports.size.weight_sizes(optimized).stored_bytes == point.size_bytes
    for p in result.pareto:  # nothing on the front is beaten on all three
        assert not any(
            q.accuracy >= p.accuracy
            and q.latency <= p.latency
            and q.size_bytes <= p.size_bytes
            and q is not p
            and (q.accuracy > p.accuracy or q.latency < p.latency or q.size_bytes < p.size_bytes)
            for q in result.points
        )


def test_the_budget_is_met_by_a_measured_point(search: dict[str, Any]) -> None:
    result: AutoResult = search["result"]
    assert result.met and result.best is not None
    assert result.best.accuracy >= 0.995 and result.best.latency_measured
    assert result.message.startswith("budget accuracy>=0.995 met")
    meeting = [p for p in result.points if p.latency_measured and p.accuracy >= 0.995]
    assert result.best.latency == min(p.latency for p in meeting)


def test_each_layer_explains_the_methods_tried(search: dict[str, Any]) -> None:
    result: AutoResult = search["result"]
    rows = {layer.ident: {t.method: t for t in layer.trials} for layer in result.layers}
    assert set(rows) == {"conv", "fc1", "fc2"}
    for ident, trials in rows.items():
        assert set(trials) >= {"float", "int8", "prune=0.25+int8"}
        assert trials["float"].delta == 0.0 and trials["float"].ms is not None
        assert trials["int8"].ms is not None and trials["int8"].bytes is not None
        assert trials["int8"].bytes < trials["float"].bytes  # measured on the one-layer graph
        assert trials["int8"].accuracy is not None and trials["int8"].accuracy < 1.0, ident
    # fc2's output is the model's output: prune-channels leaves it alone, and the table says so
    assert rows["fc2"]["prune=0.25+float"].skipped == "the passes leave this layer unchanged"
    assert rows["fc2"]["prune=0.25+int8"].skipped is not None
    # conv's pruned output channels also shrink fc1's input: a pruned conv is smaller
    assert rows["conv"]["prune=0.25+float"].bytes < rows["conv"]["float"].bytes
    text = result.text()
    assert "conv (conv2d [16, 1, 3, 3])" in text and "the passes leave this layer unchanged" in text
    assert "Pareto set" in text and result.best is not None and result.best.pipeline in text


def test_json_and_plot_are_written(search: dict[str, Any]) -> None:
    out: Path = search["out"]
    data = json.loads((out / "auto.json").read_text())
    assert data["met"] is True and data["best"]["pipeline"] == search["result"].best.pipeline
    assert len(data["pareto"]) == len(search["result"].pareto) and data["layers"][0]["trials"]
    assert (out / "auto_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_graph_is_not_changed(search: dict[str, Any]) -> None:
    text, params = search["before"]
    graph = search["graph"]
    assert str(graph) == text
    assert all(torch.equal(v, params[k]) for k, v in graph.params().items())


def test_a_second_search_resumes_from_the_cache(search: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiles(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache should hold every measurement")

    monkeypatch.setattr(LatencyTable, "whole", no_compiles)
    graph, batches = search["graph"], search["batches"]
    again = fxpress.auto(
        graph,
        batches,
        budget="accuracy>=0.995",
        methods=METHODS,
        weight_bits=(8,),
        max_candidates=8,
        confirm=2,
        cache_dir=search["cache"],
        progress_bar=False,
    )
    first: AutoResult = search["result"]
    assert again.best is not None and first.best is not None
    assert again.best.pipeline == first.best.pipeline and again.best.measured_ms == first.best.measured_ms
    assert [p.pipeline for p in again.pareto] == [p.pipeline for p in first.pareto]


def test_a_budget_no_candidate_meets(search: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    graph, batches = search["graph"], search["batches"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fxpress.auto(
            graph,
            batches,
            budget="latency<=0.000001ms",
            methods=METHODS,
            weight_bits=(8,),
            max_candidates=8,
            confirm=2,
            cache_dir=search["cache"],
            progress_bar=False,
        )
    assert not result.met and result.best is not None
    assert result.pareto  # the Pareto set is still there
    assert result.message.startswith("no candidate meets the budget latency<=1e-06ms; the closest point misses it")
    assert result.best.pipeline in result.message or "(float model)" in result.message
    fastest = min((p for p in result.points if p.latency_measured), key=lambda p: p.latency)
    assert result.best is fastest  # under a latency ceiling, the closest is the fastest measured point
    assert any(issubclass(w.category, BudgetNotMetWarning) for w in caught)
