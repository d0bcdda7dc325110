"""low-rank: the factorizations against eager, golden IR, rank choice by hand, the report, compiled, int8, bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxpress
from fxpress.cli import main
from fxpress.errors import FxpressError, PipelineError
from fxpress.ir import annotations as notes
from fxpress.lowrank import (
    ConvGeometry,
    LowRankFactor,
    RankError,
    ThresholdError,
    UnknownLayerError,
    plan_low_rank,
    spatial_factors,
    svd_factors,
    tucker2_factors,
)
from fxpress.lowrank.factors import kept_energy, spatial_spectrum, svd_spectrum, tail_error
from fxpress.passes import LowRank, Sparsify
from fxpress.reports.low_rank_report import low_rank_report
from fxpress.sparse import Sparsity


class Net(nn.Module):
    """conv [16,8,3,3] -> depthwise [16,1,3,3] -> relu -> flatten -> fc1 [64,256] -> relu -> fc2 [10,64]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc1 = nn.Linear(256, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(torch.relu(self.dw(self.conv(x))), 1)
        return self.fc2(torch.relu(self.fc1(y)))


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def graph(net: Net, x: torch.Tensor) -> fxpress.Graph:
    return fxpress.capture(net, (x,))


def _batches(n: int = 3, seed: int = 2) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 8, 4, 4, generator=gen),) for _ in range(n)]


# -- the math, against eager PyTorch ----------------------------------------------------------------

GEOMETRY = ConvGeometry(stride=(2, 1), padding=(1, 2), dilation=(1, 2))


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: ConvGeometry = GEOMETRY) -> torch.Tensor:
    return F.conv2d(x, w, b, g.stride, g.padding, g.dilation)


def test_full_rank_reproduces_the_layer():
    gen = torch.Generator().manual_seed(3)
    w, b, x = torch.randn(24, 10, generator=gen), torch.randn(24, generator=gen), torch.randn(5, 10, generator=gen)
    torch.testing.assert_close(svd_factors(w, 10).forward(x, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    wc, bc, xc = torch.randn(12, 6, 3, 3, generator=gen), torch.randn(12, generator=gen), torch.randn(2, 6, 9, 11)
    ref = _conv(xc, wc, bc)
    for f in (svd_factors(wc, 12, GEOMETRY), tucker2_factors(wc, 6, 12, GEOMETRY), spatial_factors(wc, 18, GEOMETRY)):
        torch.testing.assert_close(f.forward(xc, bc), ref, rtol=1e-4, atol=1e-4)  # stride/padding/dilation split right
        assert f.relative_error(wc) < 1e-6
    # tucker2 at full rank in one mode drops that mode's 1x1: a kxk core and one 1x1
    assert [tuple(s.weight.shape) for s in tucker2_factors(wc, 6, 4, GEOMETRY).stages] == [(4, 6, 3, 3), (12, 4, 1, 1)]


def test_truncated_error_is_the_dropped_spectrum():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(40, 30, generator=gen)
    f = svd_factors(w, 7)
    s = torch.linalg.svdvals(w.double())
    assert math.isclose(f.relative_error(w), math.sqrt(float((s[7:] ** 2).sum() / (s**2).sum())), rel_tol=1e-6)
    assert math.isclose(f.relative_error(w), tail_error(svd_spectrum(w), 7), rel_tol=1e-6)
    # the two factors share sqrt(S): equal row norms of A and column norms of B
    torch.testing.assert_close(f.stages[0].weight.norm(dim=1), f.stages[1].weight.norm(dim=0), rtol=1e-4, atol=0)
    wc, xc = torch.randn(16, 8, 3, 3, generator=gen), torch.randn(2, 8, 7, 7, generator=gen)
    sp = spatial_factors(wc, 5, GEOMETRY)
    assert math.isclose(sp.relative_error(wc), tail_error(spatial_spectrum(wc), 5), rel_tol=1e-6)
    torch.testing.assert_close(sp.forward(xc), _conv(xc, sp.dense().float(), None), rtol=1e-4, atol=1e-4)
    tk = tucker2_factors(wc, 4, 6, GEOMETRY)
    core = tk.stages[1].weight.double()  # orthonormal 1x1s: the error is what the core does not hold
    assert math.isclose(tk.relative_error(wc) ** 2, 1 - float(core.norm() ** 2 / wc.double().norm() ** 2), rel_tol=1e-4)
    assert tk.relative_error(wc) <= tucker2_factors(wc, 4, 6, GEOMETRY, rounds=0).relative_error(wc) + 1e-9  # HOOI
    torch.testing.assert_close(tk.forward(xc), _conv(xc, tk.dense().float(), None), rtol=1e-4, atol=1e-4)


def test_data_aware_svd_has_less_output_error_on_its_data():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(32, 48, generator=gen)
    x = torch.randn(512, 48, generator=gen) * torch.linspace(0.05, 3.0, 48)  # anisotropic inputs
    from fxpress.lowrank.factors import Whitening

    whitening = Whitening.of(x.double().T @ x.double() / len(x))
    plain, aware = svd_factors(w, 8), svd_factors(w, 8, whitening=whitening)
    y = F.linear(x, w)
    assert (aware.forward(x) - y).norm() < 0.9 * (plain.forward(x) - y).norm()
    assert aware.relative_error(w) > plain.relative_error(w)  # it spends weight error where the data is not
    torch.testing.assert_close(svd_factors(w, 32, whitening=whitening).forward(x), y, rtol=1e-4, atol=1e-4)


# -- the pass ----------------------------------------------------------------------------------------

GOLDEN = """\
graph(%x: f32[2,8,4,4]) {
  %conv.bias = param f32[16]
  %conv_weight_lr1 = param f32[4,8,1,1]  # low-rank conv tucker2 1/3 r=4x8
  %conv_weight_lr2 = param f32[8,4,3,3]  # low-rank conv tucker2 2/3 r=4x8
  %conv_weight_lr3 = param f32[16,8,1,1]  # low-rank conv tucker2 3/3 r=4x8
  %dw.bias = param f32[16]
  %dw.weight = param f32[16,1,3,3]
  %fc1.bias = param f32[64]
  %fc1_weight_lr1 = param f32[8,256]  # low-rank fc1 svd 1/2 r=8
  %fc1_weight_lr2 = param f32[64,8]  # low-rank fc1 svd 2/2 r=8
  %fc2.bias = param f32[10]
  %fc2.weight = param f32[10,64]
  %0 = aten.conv2d(%x, %conv_weight_lr1, none, [1, 1], [0, 0], [1, 1], 1) : f32[2,4,4,4]
  %1 = aten.conv2d(%0, %conv_weight_lr2, none, [1, 1], [1, 1], [1, 1], 1) : f32[2,8,4,4]
  %2 = aten.conv2d(%1, %conv_weight_lr3, %conv.bias, [1, 1], [0, 0], [1, 1], 1) : f32[2,16,4,4]
  %3 = aten.conv2d(%2, %dw.weight, %dw.bias, [1, 1], [1, 1], [1, 1], 16) : f32[2,16,4,4]
  %4 = aten.relu(%3) : f32[2,16,4,4]
  %5 = aten.flatten.using_ints(%4, 1) : f32[2,256]
  %6 = aten.linear(%5, %fc1_weight_lr1) : f32[2,8]
  %7 = aten.linear(%6, %fc1_weight_lr2, %fc1.bias) : f32[2,64]
  %8 = aten.relu(%7) : f32[2,64]
  %9 = aten.linear(%8, %fc2.weight, %fc2.bias) : f32[2,10]
  return %9
}"""


def _oracle(model: nn.Module, graph: fxpress.Graph, request: LowRank) -> nn.Module:
    """The eager model with each planned layer's weight replaced by the weight its factors stand for."""
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for row in plan_low_rank(graph, request):
            if row.factorized and row.factorization is not None:
                oracle.get_parameter(f"{row.layer}.weight").copy_(row.factorization.dense())
    return oracle


def test_golden_ir_and_numerics(net, graph, x):
    request = LowRank(ranks=("fc1=8", "conv=4x8"))
    out = fxpress.optimize(graph, [request])
    assert str(out) == GOLDEN
    assert out.trace[-1].stats == {
        "factorized": 2,
        "weights_before": 16 * 8 * 9 + 64 * 256,
        "weights_after": (8 * 4 + 8 * 4 * 9 + 16 * 8) + 8 * (256 + 64),
        "left_alone": 2,  # dw (grouped), fc2 (no rank given)
    }
    assert "low-rank" in out.properties and "fc1.weight" not in out.params()
    torch.testing.assert_close(out(x), _oracle(net, graph, request)(x), rtol=1e-5, atol=1e-5)
    assert str(graph).count("low-rank") == 0  # the caller's graph is untouched


def test_second_run_and_what_it_leaves_alone(net, graph, x):
    first = fxpress.optimize(graph, "low-rank{method=spatial,rank-multiple=1}")
    plan = {r.layer: r for r in plan_low_rank(graph, LowRank(method="spatial", rank_multiple=1))}
    assert plan["dw"].status == "left alone: a grouped conv (groups=16)"
    assert [plan[k].factorized for k in ("conv", "fc1", "fc2")] == [True, True, True]
    second = fxpress.optimize(first, "low-rank{method=spatial,rank-multiple=1}")
    assert second.trace[-1].modified is False and str(second) == str(first)
    assert {r.status for r in plan_low_rank(first, LowRank())} == {
        "already low-rank (2 stages)",
        "left alone: a grouped conv (groups=16)",
    }
    # naming a factorized layer is not an unknown name; full rank is not smaller, so it stays
    fxpress.optimize(first, [LowRank(ranks=("fc1=8",))])
    row = next(r for r in plan_low_rank(graph, LowRank(ranks=("fc2=10",))) if r.layer == "fc2")
    assert row.status == "left alone: factors not smaller (740 weights, 1480 MACs)" and row.error == 0.0


def test_a_sparsity_annotation_goes_with_the_weight(graph):
    sparse = fxpress.optimize(graph, [Sparsify(density=0.5, layers="fc1")])
    out = fxpress.optimize(sparse, [LowRank(ranks=("fc1=8",))])
    kept = [n for n in out.nodes("get_attr") if notes.get(n, Sparsity.key) is not None]
    assert kept == []
    factors = [n for n in out.nodes("get_attr") if isinstance(notes.get(n, LowRankFactor.key), LowRankFactor)]
    assert [str(n.target) for n in factors] == ["fc1_weight_lr1", "fc1_weight_lr2"]


def test_rank_choice_by_hand(graph):
    def rank(request: LowRank, layer: str) -> tuple[int, ...]:
        return next(r.rank for r in plan_low_rank(graph, request) if r.layer == layer)

    # fc1 [64, 256]: rank r holds r * (256 + 64) weights; half of 16384 allows r <= 25.6
    assert rank(LowRank(ratio=0.5, rank_multiple=1), "fc1") == (25,)
    assert rank(LowRank(ratio=0.5, rank_multiple=8), "fc1") == (24,)
    assert rank(LowRank(ratio=0.5), "fc1") == (16,)  # default multiple 16, rounded down to stay within the ratio
    # conv [16, 8, 3, 3] tucker2 on 4x4 outputs (1x1s at the same positions): ranks in proportion 1:2
    # r_out from 16 down, r_in = round(r_out / 2): 5x10 holds 8*5 + 10*5*9 + 16*10 = 650 > 576 = 1152 / 2;
    # 4x9 holds 8*4 + 9*4*9 + 16*9 = 500 (and the MACs, all at the same 32 positions, follow the weights)
    assert rank(LowRank(ratio=0.5, rank_multiple=1), "conv") == (4, 9)
    assert rank(LowRank(ratio=0.5, rank_multiple=4), "conv") == (4, 8)  # 8*4 + 8*4*9 + 16*8 = 448
    # energy: a weight with singular values 4, 3, 2, 1 keeps 16/30, 25/30, 29/30, 30/30 of the energy
    u, _ = torch.linalg.qr(torch.randn(64, 4, generator=torch.Generator().manual_seed(6)))
    v, _ = torch.linalg.qr(torch.randn(256, 4, generator=torch.Generator().manual_seed(7)))
    w = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])) @ v.T
    assert math.isclose(kept_energy(svd_spectrum(w), 2), 25 / 30, rel_tol=1e-6)
    shaped = graph.copy()
    shaped.replace_param("fc1.weight", w)
    assert rank(LowRank(energy=0.8, rank_multiple=1), "fc1") != (2,)  # random fc1: nearly full rank
    assert rank(LowRank(energy=0.8, rank_multiple=1, layers="fc1"), "fc1") != (2,)
    plan = {r.layer: r for r in plan_low_rank(shaped, LowRank(energy=0.8, rank_multiple=1, layers="fc1"))}
    assert plan["fc1"].rank == (2,) and plan["fc1"].chosen_by == "energy=0.8"
    assert plan["fc2"].status == "left alone: not in layers"
    assert next(r.rank for r in plan_low_rank(shaped, LowRank(energy=0.95, rank_multiple=1)) if r.layer == "fc1") == (
        3,
    )
    assert next(r.rank for r in plan_low_rank(shaped, LowRank(energy=0.8, rank_multiple=16)) if r.layer == "fc1") == (
        16,
    )


# -- the report ----------------------------------------------------------------------------------------


def test_report_by_hand_and_against_the_pass(graph, x):
    data = _batches()
    report = low_rank_report(graph, ratio=0.5, rank_multiple=4, data=data)
    rows = {r.layer: r for r in report.rows}
    # conv on 2x8x4x4: 2*4*4 = 32 output positions; tucker2 4x8: 1x1 8->4, 3x3 4->8, 1x1 8->16
    assert rows["conv"].rank == (4, 8)
    assert rows["conv"].weights == (16 * 8 * 9, 8 * 4 + 8 * 4 * 9 + 16 * 8)
    assert rows["conv"].macs == (32 * 16 * 8 * 9, 32 * (8 * 4 + 8 * 4 * 9 + 16 * 8))
    assert rows["fc1"].rank == (24,) and rows["fc1"].macs == (2 * 64 * 256, 2 * 24 * 320)
    # the whole-model error with all factorized is the factorized graph's own output error
    out = fxpress.optimize(graph, [LowRank(ratio=0.5, rank_multiple=4)])
    ref = torch.cat([graph(*b) for b in data]).double()
    got = torch.cat([out(*b) for b in data]).double()
    assert math.isclose(report.total_error or 0.0, float((got - ref).norm() / ref.norm()), rel_tol=1e-4)
    # fc2 alone: its layer error is its model error (it is the last layer)
    fc2 = rows["fc2"].op
    assert math.isclose(report.layer_error[fc2], report.model_error[fc2], rel_tol=1e-6)
    text = report.text()
    assert "left alone: a grouped conv (groups=16)" in text and "3 of 4 layers factorized" in text
    assert json.loads(json.dumps(report.as_dict()))["layers"][0]["rank"] == [4, 8]
    assert low_rank_report(graph, ranks={"fc1": 8}).layer_error == {}  # no data: no output errors


def test_cli_low_rank_report(tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 64, 64))\n"
    )
    args = ["low-rank-report", f"{path}:build", "--input-shape", "2,3,8,8", "--ratio", "0.25", "--skip", "0"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in out["layers"]] == ["left alone: skipped (0)", "factorize"]
    assert out["layers"][1]["rank"] == [15]  # 0.25 * 131072 / (2048 + 64) = 15.5 -> 15: no multiple of 16 fits
    assert main(["low-rank-report", f"{path}:build", "--input-shape", "2,3,8,8", "--ranks", "conv=4"]) == 2
    assert "ranks names 'conv', which matches no linear or conv layer" in capsys.readouterr().err


# -- compiled, and composed with int8 --------------------------------------------------------------------


class Strided(nn.Module):
    """A strided, dilated, asymmetrically padded 3x3 conv and a 1x1, for the spatial split."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.b = nn.Conv2d(32, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.tvm
def test_compiled_factorized_graphs_match_eager(graph, x):
    torch.manual_seed(8)
    xs = torch.randn(2, 16, 10, 12)
    strided = fxpress.optimize(
        fxpress.capture(Strided().eval(), (xs,)), [LowRank(method="spatial", ratio=0.5, rank_multiple=8)]
    )
    assert [r.method for r in plan_low_rank(strided, LowRank())] == ["spatial", "svd"]
    tucker = fxpress.optimize(graph, [LowRank(ratio=0.5, rank_multiple=4)])
    for g, inp in ((strided, xs), (tucker, x)):
        compiled = fxpress.compile(g, target="x86", num_threads=1, tuning=False)
        np.testing.assert_allclose(compiled(inp.numpy()), g(inp).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.tvm
def test_low_rank_then_int8_compiles_and_matches_eager_int8(graph, x):
    data = _batches(4)
    factored = fxpress.optimize(graph, [LowRank(ratio=0.5, rank_multiple=4)])
    q = fxpress.optimize(factored, ["observe{per-channel=true}", fxpress.passes.Calibrate(data=data)])
    q = fxpress.optimize(q, "fold-qdq")
    assert q.trace[-1].stats["folded"] == 8  # conv's three factors, fc1's two, fc2's two, the depthwise conv
    assert float((q(x) - factored(x)).abs().max()) < 0.1 * float(factored(x).abs().max())
    compiled = fxpress.compile(q, target="x86", num_threads=1, tuning=False)
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_options_name_what_to_fix(graph):
    with pytest.raises(RankError, match="rank 0 for 'fc1': a rank is at least 1"):
        LowRank(ranks=("fc1=0",))
    with pytest.raises(ThresholdError, match=r"energy .* in \(0, 1\]; got 1.5"):
        LowRank(energy=1.5)
    with pytest.raises(ThresholdError, match=r"energy .* got 0"):
        LowRank(energy=0.0)
    for ratio in (0.0, 1.0):
        with pytest.raises(ThresholdError, match=r"ratio .* in \(0, 1\)"):
            LowRank(ratio=ratio)
    with pytest.raises(ThresholdError, match="not both"):
        LowRank(energy=0.9, ratio=0.5)
    with pytest.raises(PipelineError, match=r"low-rank: energy is the fraction .* got 2.0"):
        fxpress.optimize(graph, "low-rank{energy=2}")
    with pytest.raises(PipelineError, match="method must be one of tucker2, spatial, svd"):
        fxpress.optimize(graph, "low-rank{method=cp}")
    with pytest.raises(FxpressError, match="NAME=RANK"):
        LowRank(ranks=("fc1",))


def test_ranks_above_the_bound_and_unknown_layers(graph):
    with pytest.raises(
        RankError, match=r"rank 65 for layer 'fc1' \(linear \[64, 256\], svd\) is above min\(out, in\) = 64"
    ):
        fxpress.optimize(graph, [LowRank(ranks=("fc1=65",))])
    with pytest.raises(
        RankError, match=r"rank 9x8 for layer 'conv' .* above \(input channels, output channels\) = 8x16"
    ):
        fxpress.optimize(graph, [LowRank(ranks=("conv=9x8",))])
    with pytest.raises(RankError, match=r"spatial.* = 24"):  # min(8 * 3, 16 * 3)
        fxpress.optimize(graph, [LowRank(method="spatial", ranks=("conv=25",))])
    with pytest.raises(UnknownLayerError, match=r"ranks names 'fc3', .*near names: fc2, fc1"):
        fxpress.optimize(graph, [LowRank(ranks=("fc3=4",))])
    with pytest.raises(UnknownLayerError, match=r"layers names 'cnv', .*near names: conv"):
        fxpress.optimize(graph, [LowRank(layers="cnv")])
    with pytest.raises(FxpressError, match="in pass low-rank"):
        fxpress.optimize(graph, [LowRank(ranks=("fc3=4",))])


def test_data_aware_pass_on_calibration_batches(graph):
    data = _batches(4)
    plain = fxpress.optimize(graph, [LowRank(ratio=0.5, rank_multiple=4, layers="fc.*")])
    request = LowRank(ratio=0.5, rank_multiple=4, layers="fc.*", data=data)
    aware = fxpress.optimize(graph, [request])
    assert request.text() == "low-rank{ratio=0.5,layers=fc.*,rank-multiple=4}"  # data is not pipeline text
    assert {r.chosen_by for r in plan_low_rank(graph, request) if r.factorized} == {"ratio=0.5, data-aware"}
    ref = torch.cat([graph(*b) for b in data])

    def error(g: fxpress.Graph) -> float:
        return float((torch.cat([g(*b) for b in data]) - ref).norm() / ref.norm())

    assert error(aware) < error(plain)
    with pytest.raises(PipelineError, match="not pipeline text"):
        fxpress.optimize(graph, "low-rank{data=batches}")


class _LinearThenReshape(nn.Module):
    """A linear whose output a reshape reads: the reshape's observer slot is shared with the linear's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(64, 64), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(x).reshape(x.shape[0], 4, 16))


def test_observer_annotations_go_with_observed():
    """observe, low-rank: low-rank invalidates 'observed'; no slot may outlive it (a shared one would be stale)."""
    torch.manual_seed(0)
    model, x = _LinearThenReshape().eval(), torch.randn(2, 64)
    graph = fxpress.capture(model, (x,))
    request = LowRank(ratio=0.25, rank_multiple=1)
    observed = fxpress.optimize(graph, "observe")
    out = fxpress.optimize(observed, [request])  # the manager verifies: no slot shared with an unobserved input
    plain = fxpress.optimize(graph, [request])
    assert str(out) == str(plain)  # the same IR as low-rank alone: no observe or qparams note anywhere
    assert "observe" not in str(out) and "qparams" not in str(out)
    # by hand: the annotated nodes low-rank kept: the input, the reshape (shared), out's output and weight
    # (fc's output and weight were replaced by the factors)
    assert out.trace[-1].stats["unobserved"] == 4
    torch.testing.assert_close(out(x), _oracle(model, graph, request)(x), rtol=1e-5, atol=1e-5)
    again = fxpress.optimize(out, "observe,low-rank{ratio=0.25,rank-multiple=1}")  # nothing left to factorize
    assert again.trace[-1].modified is False and "observe act" in str(again)  # leaves the new slots alone
