"""quant-report: per-layer SQNR / cosine against hand-quantized layers, sorting, skip-by-name, float ops, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import FxpressError, InputError
from fxpress.passes import Calibrate, FoldQDQ, Observe
from fxpress.reports.quant_report import LayerRow, quant_report, skip_pattern


class MLP(nn.Module):
    """fc1 -> relu -> fc2 -> relu -> fc3; fc2 has one outlier weight, which per-tensor int8 handles badly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, 16)
        self.fc3 = nn.Linear(16, 10)
        with torch.no_grad():
            self.fc2.weight[0, 0] = 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Residual(nn.Module):
    """A residual add and an attention-like matmul of two activations next to linears."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.proj(x)
        return self.out(torch.matmul(h, h.transpose(-1, -2)) @ h)


def _data(n: int = 4, shape: tuple[int, ...] = (16, 32), seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


def _sqnr(ref: torch.Tensor, q: torch.Tensor) -> float:
    ref, q = ref.double(), q.double()
    return 10 * math.log10(float((ref**2).sum()) / float(((ref - q) ** 2).sum()))


def _fq(v: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    return (torch.clamp(torch.round(v / scale) + zp, -128, 127) - zp) * scale


def _affine(vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.clamp(vals.min(), max=0.0), torch.clamp(vals.max(), min=0.0)
    scale = (hi - lo) / 255.0
    return scale, torch.clamp(-128 - torch.round(lo / scale), -128, 127)


def _int8_output(model: nn.Module, data: list, observe: Observe) -> tuple[fxpress.Graph, torch.Tensor, torch.Tensor]:
    graph = fxpress.capture(model, data[0])
    q = fxpress.optimize(graph, [observe, Calibrate(data=data), FoldQDQ()])
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in data])
    return q, ref, torch.cat([q(*b) for b in data])


def test_single_linear_matches_hand_quantization() -> None:
    torch.manual_seed(0)
    model = nn.Linear(64, 48).eval()
    data = _data(shape=(16, 64))
    report = quant_report(model, data, passes="observe")
    assert report.pipeline == "observe,calibrate,fold-qdq" and report.batches == 4
    [row] = report.rows
    assert (row.name, row.op, row.int8) == ("linear", "linear", True)
    # by hand: x and y affine per tensor over all batches, the weight symmetric per tensor
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        y = model(x)
        sw = model.weight.abs().max() / 127.5
        sx, zx = _affine(x)
        sy, zy = _affine(y)
        yq = _fq(nn.functional.linear(_fq(x, sx, zx), _fq(model.weight, sw, 0), model.bias), sy, zy)
    cos = float(nn.functional.cosine_similarity(y.double().reshape(1, -1), yq.double().reshape(1, -1)))
    assert row.sqnr_db == pytest.approx(_sqnr(y, yq), abs=0.01)
    assert row.cosine == pytest.approx(cos, abs=1e-6)
    assert row.sqnr_db > 30  # a sane int8 linear
    # one layer: its output is the model's, and nothing else is quantized
    assert row.model_sqnr_db == pytest.approx(row.sqnr_db, abs=1e-9)
    assert row.cumulative_sqnr_db == pytest.approx(row.sqnr_db, abs=1e-9)
    # the model's numbers are the folded int8 graph's: its float-out linear skips the output rounding
    # that fake quantization (the layer's row) applies, so it is at least as close to float
    _, ref, out = _int8_output(model, data, Observe())
    assert report.model_sqnr_db == pytest.approx(_sqnr(ref, out), abs=1e-6)
    assert row.sqnr_db - 0.5 < report.model_sqnr_db < row.sqnr_db + 6


def test_rows_are_sorted_worst_first_and_the_worst_layer_is_the_outlier() -> None:
    torch.manual_seed(1)
    model = MLP().eval()
    report = quant_report(model, _data(), passes="observe")
    sens = [r.model_sqnr_db for r in report.rows]
    assert sens == sorted(sens) and len(sens) == 3
    assert report.rows[0].module == "fc2"
    first = next(r for r in report.rows if r.module == "fc1")
    assert first.cumulative_sqnr_db == pytest.approx(first.sqnr_db, abs=1e-9)  # nothing quantized before fc1
    last = next(r for r in report.rows if r.module == "fc3")
    assert abs(last.cumulative_sqnr_db - report.model_sqnr_db) < 0.5  # fc3's output is the model's
    assert last.cumulative_sqnr_db < last.sqnr_db  # upstream error has built up by fc3
    text = report.text().splitlines()
    table = [line.split()[0] for line in text[text.index(next(t for t in text if t.startswith("layer "))) + 1 :][:3]]
    assert table == [r.name for r in report.rows]
    assert "observe{skip=[fc2]}" in report.text()


def test_skipping_the_worst_layer_by_name_keeps_it_float_and_lowers_the_error() -> None:
    torch.manual_seed(1)
    model, data = MLP().eval(), _data()
    worst = quant_report(model, data, passes="observe").rows[0]
    skipped = quant_report(model, data, passes=f"observe{{skip=[{worst.module}]}}")
    assert worst.name not in [r.name for r in skipped.rows]
    assert [(f.name, f.module) for f in skipped.float_ops] == [(worst.name, "fc2")]
    assert "no quantization parameters" in skipped.float_ops[0].reason
    assert f"{worst.name} (linear, fc2)" in skipped.text().split("left in float:")[1]
    q, ref, out = _int8_output(model, data, Observe(skip=(worst.module,)))
    assert "aten.linear" in str(q) and str(q).count("fxpress.quantized_linear") == 2  # fc2 really stays float
    assert skipped.model_sqnr_db == pytest.approx(_sqnr(ref, out), abs=1e-6)
    before = quant_report(model, data, passes="observe").model_sqnr_db
    assert skipped.model_sqnr_db > before + 3.0


def test_float_ops_and_int8_flags_follow_what_fold_qdq_does() -> None:
    torch.manual_seed(2)
    model, data = Residual().eval(), _data(3, (2, 5, 16))
    report = quant_report(model, data, passes="observe")
    _, ref, out = _int8_output(model, data, Observe())
    q = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(), Calibrate(data=data), FoldQDQ()])
    left = {n.name for n in q.nodes("call_function")}
    assert {r.op for r in report.rows} == {"linear", "add", "matmul"}
    for r in report.rows:  # int8 exactly when fold-qdq replaced the op
        assert r.int8 == (r.name not in left), r
    assert {f.name for f in report.float_ops} == {r.name for r in report.rows if not r.int8}
    keys = [(not r.int8, r.model_sqnr_db) for r in report.rows]
    assert keys == sorted(keys)  # int8 layers first, each group worst first
    for f in report.float_ops:
        assert "integer kernel" in f.reason and f"  {f.name} ({f.op}" in report.text()
    assert report.model_sqnr_db == pytest.approx(_sqnr(ref, out), abs=1e-6)
    assert all(-1.0 <= r.cosine <= 1.0 + 1e-12 and r.cosine > 0.99 for r in report.rows)


def test_default_pipeline_on_a_cnn_json_and_limit(cnn) -> None:
    data = _data(4, (2, 3, 8, 8))
    graph = fxpress.capture(cnn, data[0])
    before = str(graph)
    report = quant_report(graph, data, limit=2)
    assert str(graph) == before  # the user's graph is untouched
    assert report.batches == 2 and report.pipeline.startswith("fold-bn,observe{per-channel=true},calibrate")
    assert {r.module for r in report.rows} == {"conv", "fc"}
    again = quant_report(cnn, data[:2])
    assert [(r.name, r.sqnr_db) for r in again.rows] == [(r.name, r.sqnr_db) for r in report.rows]
    doc = json.loads(json.dumps(report.to_json()))
    assert [row["name"] for row in doc["layers"]] == [r.name for r in report.rows]
    assert doc["model_sqnr_db"] == pytest.approx(report.model_sqnr_db, abs=1e-5)
    assert set(doc["layers"][0]) >= {"sqnr_db", "cosine", "model_sqnr_db", "cumulative_sqnr_db", "int8", "module"}


def test_bad_input() -> None:
    model, data = MLP().eval(), _data()
    with pytest.raises(InputError, match="calibration data is empty"):
        quant_report(model, [])
    with pytest.raises(InputError, match="iterable of input tuples"):
        quant_report(model, 3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="limit must be >= 0"):
        quant_report(model, data, limit=-1)
    with pytest.raises(InputError, match="has no observe pass"):
        quant_report(model, data, passes="fold-bn")
    q = fxpress.optimize(fxpress.capture(model, data[0]), [Observe(), Calibrate(data=data), FoldQDQ()])
    with pytest.raises(InputError, match="already quantized"):
        quant_report(q, data)
    with pytest.raises(InputError, match=r"data\[1\], input 'x': got torch.float32 \[16, 31\]"):
        quant_report(model, [data[0], (torch.randn(16, 31),)])
    with pytest.raises(FxpressError, match="unknown pass 'observ'"):
        quant_report(model, data, passes="observ")


def test_in_place_ops_give_the_same_report() -> None:
    """A graph with an in-place op is rerun from the start for each layer; the numbers must not change."""

    def build(inplace: bool) -> nn.Module:
        torch.manual_seed(4)
        return nn.Sequential(nn.Linear(32, 24), nn.ReLU(inplace=inplace), nn.Linear(24, 8)).eval()

    data = _data(2)
    graph = fxpress.capture(build(True), data[0])
    assert "aten.relu_" in str(graph)
    a, b = quant_report(graph, data, passes="observe"), quant_report(build(False), data, passes="observe")
    assert [(r.sqnr_db, r.model_sqnr_db, r.cumulative_sqnr_db) for r in a.rows] == [
        (r.sqnr_db, r.model_sqnr_db, r.cumulative_sqnr_db) for r in b.rows
    ]


def test_skip_pattern_picks_one_layer() -> None:
    def row(name: str, module: str) -> LayerRow:
        return LayerRow(name, "linear", module, True, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

    rows = [row("add_6", "enc.layer.0.output"), row("linear_5", "enc.layer.0.output.dense"), row("linear_50", "")]
    assert skip_pattern(rows[1], rows) == "enc.layer.0.output.dense"
    assert skip_pattern(rows[0], rows) == "^add_6$"  # its module path would also skip linear_5
    assert skip_pattern(rows[2], rows) == "^linear_50$"
