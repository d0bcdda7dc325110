"""prune-report: parameter and MAC reductions against a hand computation, importance, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from prune_zoo import PlainCNN, build
from test_channel_groups import CatDynamic
from torch import nn

import fxpress
from fxpress.errors import FxpressError
from fxpress.passes.prune import PruneError, analyze, importance
from fxpress.reports.prune_report import prune_report


@pytest.fixture(scope="module")
def cnn() -> tuple[PlainCNN, fxpress.Graph]:
    model, _, graph = build("plain-cnn")
    return model, graph  # conv1 3->8, conv2 8->16 stride 2, flatten (16x4x4) -> fc 10; input 2x3x8x8


# PlainCNN by hand. Parameters (floating point: weights, biases, BN scale/shift/mean/var):
#   conv1 8*3*3*3 + 8 = 224   bn1 4*8 = 32   conv2 16*8*3*3 + 16 = 1168   bn2 4*16 = 64   fc 10*256 + 10 = 2570
BEFORE_PARAMS = 224 + 32 + 1168 + 64 + 2570  # 4058
# MACs on the 2x3x8x8 example: conv1 (2*8*8*8 outputs x 27) + conv2 (2*16*4*4 x 72) + fc (2*10 x 256)
BEFORE_MACS = 2 * 8 * 8 * 8 * 27 + 2 * 16 * 4 * 4 * 72 + 2 * 10 * 256  # 69632


def test_half_the_channels_by_hand(cnn):
    _, graph = cnn
    report = prune_report(graph, 0.5)
    # ratio 0.5 keeps 4 of conv1's 8 channels and 8 of conv2's 16; fc's 10 outputs are the graph output
    after_params = (4 * 27 + 4) + 4 * 4 + (8 * 4 * 9 + 8) + 4 * 8 + (10 * 8 * 16 + 10)  # 1746
    after_macs = 2 * 4 * 8 * 8 * 27 + 2 * 8 * 4 * 4 * (4 * 9) + 2 * 10 * (8 * 16)  # 25600
    assert (report.params_before, report.params_after) == (BEFORE_PARAMS, after_params)
    assert (report.macs_before, report.macs_after) == (BEFORE_MACS, after_macs)
    assert [(r.units, r.keep, r.status) for r in report.rows] == [
        (8, 4, "pruned"),
        (16, 8, "pruned"),
        (10, 10, "frozen: output (output): graph output: the model's output shape must not change"),
    ]


def test_round_to_eight_by_hand(cnn):
    _, graph = cnn
    report = prune_report(graph, 0.5, round_to=8)
    # conv1 would keep 4: rounded up to 8 (nothing pruned); conv2 keeps 8 (already a multiple)
    assert [r.keep for r in report.rows] == [8, 8, 10]
    assert report.params_after == 224 + 32 + (8 * 8 * 9 + 8) + 4 * 8 + (10 * 128 + 10)
    assert report.macs_after == 2 * 8 * 8 * 8 * 27 + 2 * 8 * 4 * 4 * 72 + 2 * 10 * 128


def test_text_and_dict(cnn):
    _, graph = cnn
    report = prune_report(graph, 0.5)
    lines = report.text().splitlines()
    assert lines[0] == "prune-report PlainCNN: ratio 0.5 (per-layer=True, round-to=1, importance=l1)"
    assert lines[1].split() == ["group", "units", "width", "keep", "members", "status"]
    assert lines[2].split()[:6] == ["0", "conv1.weight", "8", "1", "4", "7"]
    assert lines[-2:] == ["parameters 4058 -> 1746 (-57.0%)", "MACs 69632 -> 25600 (-63.2%)"]
    data = json.loads(json.dumps(report.as_dict()))
    assert data["params"] == {"before": 4058, "after": 1746}
    assert data["macs"] == {"before": 69632, "after": 25600}
    assert data["groups"][1]["members"][:5] == [
        "conv2.weight:0",
        "conv2.bias:0",
        "bn2.weight:0",
        "bn2.bias:0",
        "fc.weight:1x16",
    ]
    assert data["groups"][2]["blockers"] == ["output (output): graph output: the model's output shape must not change"]


def test_the_report_changes_nothing(cnn):
    _, graph = cnn
    text = str(graph)
    assert prune_report(graph, 0.3).params_after < BEFORE_PARAMS
    assert str(graph) == text
    zero = prune_report(graph, 0.0)
    assert (zero.params_after, zero.macs_after) == (BEFORE_PARAMS, BEFORE_MACS)


def test_global_ranking_and_protection(cnn):
    _, graph = cnn
    glob = prune_report(graph, 0.5, per_layer=False)
    assert sum(r.units - r.keep for r in glob.rows) == 12  # half of the 8 + 16 prunable units, ranked together
    assert prune_report(graph, 0.5, protected=["conv1"]).rows[0].keep == 8  # a module path
    assert prune_report(graph, 0.5, protected=["conv2d_1"]).rows[1].keep == 16  # an fx node name


def test_importance_by_hand(cnn):
    model, graph = cnn
    g = analyze(graph)[0]
    w = {k: v.detach().double() for k, v in model.named_parameters()}
    l1 = [
        float(w["conv1.weight"][c].abs().sum() + w["conv1.bias"][c].abs() + w["bn1.weight"][c].abs())
        + float(w["bn1.bias"][c].abs() + w["conv2.weight"][:, c].abs().sum())
        for c in range(8)
    ]
    l2 = [
        math.sqrt(
            float((w["conv1.weight"][c] ** 2).sum() + w["conv1.bias"][c] ** 2 + w["bn1.weight"][c] ** 2)
            + float(w["bn1.bias"][c] ** 2 + (w["conv2.weight"][:, c] ** 2).sum())
        )
        for c in range(8)
    ]
    assert importance(graph, g, "l1") == pytest.approx(l1)
    assert importance(graph, g, "l2") == pytest.approx(l2)
    assert importance(graph, g, "bn-scale") == pytest.approx(w["bn1.weight"].abs().tolist())
    report = prune_report(graph, 0.5, importance="bn-scale")
    assert report.rows[0].keep == 4


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan")])
def test_ratio_outside_zero_one(cnn, ratio):
    with pytest.raises(PruneError, match=r"ratio must be in \[0, 1\) \(the fraction of channels to remove\)"):
        prune_report(cnn[1], ratio)


def test_a_ratio_that_removes_a_whole_layer():
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3)).eval()
    graph = fxpress.capture(model, (torch.randn(2, 4),))
    assert prune_report(graph, 0.7).rows[0].keep == 1
    with pytest.raises(PruneError, match=r"ratio 0.9 would remove every channel of group 0 \(0.weight: 2 units\)"):
        prune_report(graph, 0.9)


def test_a_protected_name_that_does_not_exist(cnn):
    with pytest.raises(
        PruneError,
        match=r"protected node 'conv9' does not exist in the graph \(did you mean 'conv\d'\?\); name an op node",
    ):
        prune_report(cnn[1], 0.5, protected=["conv9"])


def test_a_pruned_dim_of_dynamic_size():
    b, n = torch.export.Dim("b"), torch.export.Dim("n")
    graph = fxpress.capture(CatDynamic(), (torch.randn(3, 8), torch.randn(3, 5)), dynamic_shapes=({0: b}, {0: b, 1: n}))
    with pytest.raises(PruneError, match=r"cannot prune group 0 \(fc.weight\): its channels reach a dynamic dimension"):
        prune_report(graph, 0.5)
    assert prune_report(graph, 0.5, protected=["fc"]).params_after == prune_report(graph, 0.0).params_after


def test_importance_options(cnn):
    with pytest.raises(PruneError, match="importance 'taylor' needs data"):
        prune_report(cnn[1], 0.5, importance="taylor")
    with pytest.raises(PruneError, match="unknown importance 'fisher'; choose one of l1, l2, bn-scale, taylor"):
        prune_report(cnn[1], 0.5, importance="fisher")
    se = build("squeeze-excite")[2]
    with pytest.raises(PruneError, match=r"importance 'bn-scale' needs a batch-norm scale in group 1 \(fc1.weight\)"):
        prune_report(se, 0.5, importance="bn-scale")
    with pytest.raises(PruneError, match="round-to must be a positive channel multiple"):
        prune_report(cnn[1], 0.5, round_to=0)
    assert issubclass(PruneError, FxpressError) and issubclass(PruneError, ValueError)
