"""Log-level weights (observe{weight-scheme=log}): levels, rounding, scale search, int8 numerics, TVM bit-exactness,
quant-report's columns and every bad input (all-zero layers, bit widths, activations, fake-quantize)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import runnable_preset
from torch import nn

import fxpress
from fxpress.errors import InputError, PassError, PipelineError
from fxpress.ir.annotations import annotate, get
from fxpress.passes import Calibrate, FoldQDQ, Observe
from fxpress.quant import ObserverSpec, QScheme, QuantParams
from fxpress.quant.scheme import LOG_BITS, log_top, round_log
from fxpress.reports.quant_report import quant_report

LEVELS = {  # the integer levels of each log bit width, written out by hand
    2: {-1, 0, 1},
    3: {-4, -2, -1, 0, 1, 2, 4},
    4: {0, *(s * 2**k for s in (-1, 1) for k in range(7))},
}


class CNN(nn.Module):
    """conv -> relu -> max-pool -> flatten -> linear -> relu -> linear: every weighted op fold-qdq folds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(y, 1))))


def _cnn_data(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g),) for _ in range(n)]


def _mlp(zero_fc2: bool = False, zero_row: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    with torch.no_grad():
        if zero_fc2:
            model[2].weight.zero_()
        if zero_row:
            model[0].weight[3].zero_()
    return model


def _mlp_data(n: int = 3) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=g),) for _ in range(n)]


def _calibrated(model: nn.Module, data: list, **observe: object) -> fxpress.Graph:
    graph = fxpress.capture(model, data[0])
    return fxpress.optimize(graph, [Observe(**observe), Calibrate(data=data)])


def _int8_weights(graph: fxpress.Graph) -> dict[str, torch.Tensor]:
    return {name: p for name, p in graph.gm.named_parameters() if name.endswith("weight_i8")}


# --- levels and rounding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", LOG_BITS)
def test_levels_of_each_bit_width(bits: int) -> None:
    """A dense sweep rounds onto exactly the hand-written levels: the range is [-2^K, 2^K], K = 2^(bits-1) - 2."""
    scheme = QScheme.log(bits)
    assert scheme.qrange == (-log_top(bits), log_top(bits)) == (min(LEVELS[bits]), max(LEVELS[bits]))
    sweep = torch.linspace(-200, 200, 40001)
    assert set(_quantize(sweep, scheme).tolist()) == LEVELS[bits]
    assert len(LEVELS[bits]) <= 2**bits  # a sign and a (bits-1)-bit exponent code, one code for zero


def _quantize(x: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    return QuantParams(scheme, torch.ones(1), torch.zeros(1, dtype=torch.int64)).quantize(x)


def test_rounding_takes_the_nearest_level_ties_toward_zero() -> None:
    """Midpoints are arithmetic (1.5 * 2^k; 0.5 between 0 and 1), not geometric (sqrt 2 * 2^k)."""
    cases = {0.5: 0, 0.51: 1, 1.4: 1, 1.5: 1, 1.51: 2, 2.9: 2, 3.0: 2, 3.01: 4, 5.9: 4, 6.1: 8, 48.0: 32, 48.5: 64}
    cases |= {1000.0: 64, 0.0: 0, 0.2: 0}
    x = torch.tensor(list(cases), dtype=torch.float64)
    expected = torch.tensor(list(cases.values()), dtype=torch.float64)
    assert torch.equal(round_log(x, 64), expected)
    assert torch.equal(round_log(-x, 64), -expected)
    assert round_log(torch.tensor([1.42]), 64).item() == 1.0  # log-space rounding would give 2 (1.42 > sqrt 2)
    g = torch.Generator().manual_seed(0)  # against brute force: the level at the least distance
    r = torch.randn(5000, generator=g, dtype=torch.float64) * 30
    levels = torch.tensor(sorted(LEVELS[4]), dtype=torch.float64)
    nearest = levels[(r[:, None] - levels[None, :]).abs().argmin(1)]
    assert torch.equal(round_log(r, 64), nearest)
    assert round_log(torch.tensor([5.0, -3.0]), 4).tolist() == [4.0, -2.0]  # 3 bits: 5 clips to the top


def test_scheme_validation() -> None:
    assert QScheme.log(4, axis=0).text() == "i8 sym ch0 log [-64,64]"
    for bits in (0, 1, 5, 8):
        with pytest.raises(ValueError, match=r"log levels take 2, 3 or 4 bits, got .*beyond int8"):
            QScheme.log(bits)
    bad = [
        {"levels": "log"},  # no range
        {"levels": "log", "symmetric": True, "quant_min": -8, "quant_max": 8},  # 8 is no top of a log code
        {"levels": "log", "symmetric": False, "quant_min": -64, "quant_max": 64},
        {"levels": "cubic"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match=r"log levels need|levels must be one of"):
            QScheme(**kwargs)  # type: ignore[arg-type]


# --- observe: per-tensor and per-channel, the scale search ---------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_observe_gives_log_weights_exactly_zero_and_signed_powers_of_two(per_channel: bool) -> None:
    data = _cnn_data()
    torch.manual_seed(0)
    calibrated = _calibrated(CNN().eval(), data, per_channel=per_channel, weight_scheme="log", weight_bits=4)
    weights = [n for n in calibrated.nodes("get_attr") if n.target.endswith("weight")]
    for w in weights:
        p = get(w, "qparams")
        assert p.scheme == QScheme.log(4, 0 if per_channel else None)
        assert get(w, "observe").spec.kind == "mse"  # weight-observer=auto: the scale with the least squared error
        assert p.scale.numel() == (calibrated.param(w).shape[0] if per_channel else 1)
        deq = p.fake_quantize(calibrated.param(w))
        ratio = deq / p.scale.reshape(-1, *[1] * (deq.dim() - 1))  # each row on its own scale's levels
        assert set(torch.round(ratio).unique().tolist()) <= LEVELS[4]
        torch.testing.assert_close(ratio, torch.round(ratio), rtol=0, atol=1e-4)
    folded = fxpress.optimize(calibrated, [FoldQDQ()])
    assert folded.trace[-1].stats["float"] == {}
    for name, wq in _int8_weights(folded).items():
        assert set(wq.unique().tolist()) <= LEVELS[4], name


def test_mse_scale_search_beats_the_max_scale() -> None:
    """Per channel, the searched scale's squared rounding error is at most the max-to-top-level scale's."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g) * torch.linspace(0.05, 1.0, 16)[:, None]
    scheme = QScheme.log(4, axis=0)
    errors = {}
    for kind in ("mse", "minmax"):
        obs = ObserverSpec(kind, scheme).make()
        obs.observe(w)
        p = obs.qparams()
        errors[kind] = ((p.fake_quantize(w) - w) ** 2).sum(1)
    assert bool((errors["mse"] <= errors["minmax"] * 1.0001).all())
    assert float(errors["mse"].sum()) < 0.9 * float(errors["minmax"].sum())


def test_an_all_zero_row_quantizes_to_zero() -> None:
    """One pruned output channel is not an error: its integers are zero and the layer folds."""
    data = _mlp_data()
    q = fxpress.optimize(
        _calibrated(_mlp(zero_row=True), data, per_channel=True, weight_scheme="log", weight_bits=3), [FoldQDQ()]
    )
    wq = next(iter(_int8_weights(q).values()))
    assert not bool(wq[3].any()) and bool(wq.any()) and set(wq.unique().tolist()) <= LEVELS[3]


# --- numerics: eager int8 against fake quantization, TVM against eager -----------------------------------------------


def test_eager_int8_within_one_step_of_fake_quantization() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 48)).eval()
    data = [(torch.randn(16, 64),) for _ in range(8)]
    graph = _calibrated(model, data, per_channel=True, weight_scheme="log", weight_bits=4)
    lin = next(n for n in graph.nodes("call_function") if "linear" in str(n.target))
    px, pw, py = get(lin.args[0], "qparams"), get(lin.args[1], "qparams"), get(lin, "qparams")
    q = fxpress.optimize(graph, [FoldQDQ()])
    x = data[0][0]  # inside the calibrated range
    w = pw.fake_quantize(graph.param(lin.args[1]))
    fake = py.fake_quantize(nn.functional.linear(px.fake_quantize(x), w, graph.param(lin.args[2])))
    assert float((q(x) - fake).abs().max()) <= float(py.scale) * 1.001
    wq = next(iter(_int8_weights(q).values()))
    torch.testing.assert_close(wq.double() * pw.scale.double()[:, None], w.double(), rtol=1e-6, atol=0)


@pytest.mark.tvm
@pytest.mark.parametrize("preset", ["x86-avx2", "x86"])
def test_compiled_equals_eager_int8_bit_for_bit(preset: str) -> None:
    """Log-level int8 weights on the AVX2 kernels (u8s8: +-64 pairs cannot saturate) and the host's best ISA
    (VNNI / AMX here); the generic int32 path computes any int8 weights the same way (tests/test_fold_qdq.py)."""
    int8_path = runnable_preset(preset) if preset != "x86" else preset
    data = _cnn_data()
    torch.manual_seed(0)
    calibrated = _calibrated(CNN().eval(), data, per_channel=True, weight_scheme="log", weight_bits=4)
    q = fxpress.optimize(calibrated, [FoldQDQ()])
    compiled = fxpress.compile(q, target=int8_path, num_threads=1)
    for (x,) in [*data, (torch.randn(8, 3, 8, 8) * 3,)]:  # the last one clips
        np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_an_all_zero_weight_layer_is_refused_naming_it(per_channel: bool) -> None:
    graph = fxpress.capture(_mlp(zero_fc2=True), _mlp_data()[0])
    with pytest.raises(PassError) as err:
        fxpress.optimize(graph, Observe(per_channel=per_channel, weight_scheme="log", weight_bits=4))
    text = str(err.value)
    assert "in pass observe" in text and "weight '2.weight' of layer '2'" in text and "zero throughout" in text
    assert "observe{skip=[2]}" in text
    fxpress.optimize(graph, Observe(per_channel=per_channel, weight_bits=4))  # uniform levels take it (scale eps)
    skipped = fxpress.optimize(graph, Observe(weight_scheme="log", weight_bits=4, skip=("^2$",)))
    assert get(next(n for n in skipped.nodes("get_attr") if n.target == "2.weight"), "qparams") is None


@pytest.mark.parametrize("bits", [0, 1, 5, 6, 8, 9])
def test_log_bit_widths_outside_two_to_four_are_refused(bits: int) -> None:
    with pytest.raises(PipelineError, match=rf"weight-scheme=log: weight-bits={bits}, but log levels take 2, 3 or 4"):
        fxpress.passes.parse_pipeline(f"observe{{weight-scheme=log,weight-bits={bits}}}")
    with pytest.raises(ValueError, match="1 bit has no code left for zero and 5 or more would need levels beyond"):
        Observe(weight_scheme="log", weight_bits=bits)


def test_other_bad_options() -> None:
    cases = {
        "observe{weight-scheme=cubic}": "weight-scheme must be one of uniform, log",
        "observe{weight-scheme=log}": "weight-bits=8, but log levels take 2, 3 or 4 bits",
        "observe{weight-scheme=log,weight-bits=4,weight-reduce-range=true}": "drop weight-reduce-range",
        "observe{activation-scheme=log}": "activation-scheme",  # weights only: no such option
        "observe{weight-bits=9}": "weight-bits must be an integer from 2 to 8",
    }
    for text, match in cases.items():
        with pytest.raises(PipelineError, match=match):
            fxpress.passes.parse_pipeline(text)


def test_fold_qdq_keeps_log_level_activations_float() -> None:
    """Log levels are for weights: an activation given log parameters by hand has no integer kernel."""
    data = _mlp_data()
    graph = _calibrated(_mlp(), data, per_channel=True)
    x = next(iter(graph.nodes("placeholder")))
    annotate(x, QuantParams(QScheme.log(4), torch.tensor([0.05]), torch.zeros(1, dtype=torch.int64)))
    q = fxpress.optimize(graph, [FoldQDQ()])
    assert q.trace[-1].stats["float"] == {"linear": "log-level activations (log levels are for weights only)"}


def test_fake_quantize_refuses_log_weights() -> None:
    graph = _calibrated(_mlp(), _mlp_data(), per_channel=True, weight_scheme="log", weight_bits=4)
    with pytest.raises(InputError, match=r"log-level weights .*fake-quantize rounds to uniform levels only") as err:
        fxpress.optimize(graph, "fake-quantize")
    assert "post-training" in str(err.value) and "weight-scheme=log" in str(err.value)


# --- quant-report --------------------------------------------------------------------------------------------------


def _sqnr(ref: torch.Tensor, q: torch.Tensor) -> float:
    ref, q = ref.double(), q.double()
    return 10 * math.log10(float((ref**2).sum()) / float(((ref - q) ** 2).sum()))


def test_quant_report_measures_log_weights_and_compares_uniform() -> None:
    """Weight SQNRs hand-computed from the observers' parameters; the layer columns of the two schemes."""
    model, data = _mlp(), _mlp_data()
    report = quant_report(
        model,
        data,
        passes="observe{per-channel=true},calibrate,fold-qdq",
        weight_scheme="log",
        weight_bits=4,
        compare_weights="uniform",
    )
    assert "weight-scheme=log,weight-bits=4" in report.pipeline
    rows = {r.module: r for r in report.rows}
    for module, layer in (("0", model[0]), ("2", model[2])):
        w = layer.weight.detach()
        for scheme, column in (
            (QScheme.log(4, 0), "weight_sqnr_db"),
            (QScheme("int8", True, 0, quant_min=-7, quant_max=7), "compare_weight_sqnr_db"),
        ):
            obs = ObserverSpec("mse" if scheme.log_levels else "minmax", scheme).make()
            obs.observe(w)
            assert getattr(rows[module], column) == pytest.approx(_sqnr(w, obs.qparams().fake_quantize(w)), abs=1e-6)
        assert rows[module].compare_sqnr_db is not None and math.isfinite(rows[module].compare_sqnr_db)
    text = report.text()
    assert "w SQNR uniform" in text and "SQNR uniform" in text and "'uniform' columns" in text
    doc = report.to_json()
    assert doc["compare_weights"] == "uniform" and doc["layers"][0]["compare_sqnr_db"] is not None
    plain = quant_report(model, data, passes="observe{per-channel=true},calibrate,fold-qdq")
    assert plain.compare_weights is None and all(r.compare_sqnr_db is None for r in plain.rows)
    assert all(r.weight_sqnr_db is not None for r in plain.rows)


def test_quant_report_bad_weight_options() -> None:
    model, data = _mlp(), _mlp_data(1)
    with pytest.raises(InputError, match="weight-bits=5, but log levels take 2, 3 or 4 bits"):
        quant_report(model, data, weight_scheme="log", weight_bits=5)
    with pytest.raises(InputError, match=r"compare_weights='log': .*weight-bits=8, but log levels take 2, 3 or 4"):
        quant_report(model, data, compare_weights="log")  # the int8 pipeline's 8-bit weights have no log form
    with pytest.raises(InputError, match="compare_weights must be one of uniform, log"):
        quant_report(model, data, compare_weights="pow2")
    graph = _calibrated(model, data, per_channel=True)
    with pytest.raises(InputError, match="has no observe pass"):
        quant_report(graph, data, passes="calibrate,fold-qdq", weight_scheme="log", weight_bits=4)


def test_quant_report_cli_flags(tmp_path, capsys) -> None:
    from fxpress.cli import main

    source = tmp_path / "qmodel.py"
    source.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()\n"
        "def batches():\n"
        "    g = torch.Generator().manual_seed(5)\n"
        "    return [(torch.randn(4, 12, generator=g),) for _ in range(2)]\n"
    )
    argv = ["quant-report", f"{source}:build", "--input-shape", "4,12", "--calibration", f"{source}:batches"]
    log = ["--weight-scheme", "log", "--weight-bits", "4", "--compare-weights", "uniform"]
    assert main([*argv, *log, "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert "weight-scheme=log" in doc["pipeline"] and doc["compare_weights"] == "uniform"
    assert all(r["weight_sqnr_db"] is not None and r["compare_sqnr_db"] is not None for r in doc["layers"])
    assert main([*argv, "--weight-scheme", "log", "--weight-bits", "6"]) == 2
    assert "log levels take 2, 3 or 4 bits" in capsys.readouterr().err


@pytest.mark.tvm
def test_shift_kernel_of_the_benchmark_is_exact() -> None:
    """tools/bench/log_shift.py's shift-and-add kernel, on a small shape: bit-exact against numpy (it checks itself)."""
    from tools.bench.log_shift import LOG4, build_shift, operands, shift_fields

    x, w = operands(8, 40, 32)
    assert set(np.unique(w).tolist()) <= LEVELS[4] and len(LOG4) == 15
    assert build_shift(x, w).exact
    with pytest.raises(ValueError, match="not all zero or"):
        shift_fields(np.full((16, 4), 3, dtype=np.int8), 16)
