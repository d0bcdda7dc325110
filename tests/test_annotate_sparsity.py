"""annotate-sparsity: golden IR, detects the pattern sparsify made or the user's zeros, dense stays dense, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import PipelineError
from fxpress.ir import annotations as notes
from fxpress.passes import AnnotateSparsity
from fxpress.sparse import Sparsity, SparsityError


class Net(nn.Module):
    """conv [32,4,3,3] -> flatten -> fc1 [64,512] -> relu -> fc2 [32,64] -> head [10,32]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(torch.relu(self.conv(x)), 1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(y)))))


def _zero_blocks(w: torch.Tensor, r: int, c: int, keep: float, seed: int) -> None:
    """Zero all but a random `keep` fraction of the r x c blocks of `w` (as a matrix [out, in])."""
    m = w.data.reshape(w.shape[0], -1)
    rows, cols = m.shape[0] // r, m.shape[1] // c
    kept = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) < keep
    m.mul_(kept.repeat_interleave(r, 0).repeat_interleave(c, 1))


def _note(graph: fxpress.Graph, target: str) -> Sparsity | None:
    return notes.get(graph.fx.find_nodes(op="get_attr", target=target)[0], Sparsity.key)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def pruned() -> Net:
    """fc1 in 8x1 blocks (25 % kept), fc2 2:4 (by hand), conv 10 % unstructured, head dense."""
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        _zero_blocks(net.fc1.weight, 8, 1, 0.25, seed=1)
        groups = net.fc2.weight.data.view(32, 16, 4)
        groups.masked_fill_(torch.argsort(groups.abs(), -1).argsort(-1) < 2, 0.0)  # the 2 smallest of each 4
        _zero_blocks(net.conv.weight, 1, 1, 0.1, seed=2)
    return net


GOLDEN = """\
graph(%x: f32[2,4,4,4]) {
  %conv.bias = param f32[32]
  %conv.weight = param f32[32,4,3,3]  # sparsity unstructured density=0.1181
  %fc1.bias = param f32[64]
  %fc1.weight = param f32[64,512]  # sparsity 8x1 density=0.2585
  %fc2.bias = param f32[32]
  %fc2.weight = param f32[32,64]  # sparsity 2:4 density=0.5
  %head.bias = param f32[10]
  %head.weight = param f32[10,32]
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1]) : f32[2,32,4,4]
  %1 = aten.relu(%0) : f32[2,32,4,4]
  %2 = aten.flatten.using_ints(%1, 1) : f32[2,512]
  %3 = aten.linear(%2, %fc1.weight, %fc1.bias) : f32[2,64]
  %4 = aten.relu(%3) : f32[2,64]
  %5 = aten.linear(%4, %fc2.weight, %fc2.bias) : f32[2,32]
  %6 = aten.relu(%5) : f32[2,32]
  %7 = aten.linear(%6, %head.weight, %head.bias) : f32[2,10]
  return %7
}"""


def test_golden_ir_detects_each_pattern_and_is_exact(pruned, x):
    graph = fxpress.capture(pruned, (x,))
    out = fxpress.optimize(graph, "annotate-sparsity")
    assert str(out) == GOLDEN
    assert out.trace[-1].stats == {"annotated": {"conv": "unstructured", "fc1": "8x1", "fc2": "2:4"}}
    assert "sparsity-annotated" in out.properties
    w = pruned.fc1.weight
    blocks = (w.reshape(8, 8, 512) != 0).any(1).float().mean()
    assert _note(out, "fc1.weight") == Sparsity("8x1", (8, 1), round(float(blocks), 6))
    assert _note(out, "conv.weight").density == round(float((pruned.conv.weight != 0).float().mean()), 6)
    torch.testing.assert_close(out(x), pruned(x), rtol=0, atol=0)  # annotations only: bit-exact
    assert all(torch.equal(out.param(k), v) for k, v in graph.params().items())
    again = fxpress.optimize(out, "annotate-sparsity")
    assert again.trace[-1].modified is False and str(again) == str(out)


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [  # fc1 [64,512]: the kept count is round(density * blocks)
        ("sparsify{density=0.1,pattern=16x1,skip=[head]}", Sparsity("16x1", (16, 1), round(205 / 2048, 6))),
        ("sparsify{density=0.2,pattern=4x1,skip=[head]}", Sparsity("4x1", (4, 1), round(1638 / 8192, 6))),
        ("sparsify{pattern=2:4}", Sparsity("2:4", (1, 4), 0.5)),
        ("sparsify{pattern=1:4}", Sparsity("1:4", (1, 4), 0.25)),
        ("sparsify{density=0.3}", Sparsity("unstructured", (1, 1), round(9830 / 32768, 6))),
    ],
)
def test_detects_what_sparsify_made(x, pipeline, expected):
    torch.manual_seed(0)
    graph = fxpress.capture(Net().eval(), (x,))
    made = fxpress.optimize(graph, pipeline)
    stripped = made.copy()  # forget what sparsify recorded: annotate must find it from the weights alone
    for node in stripped.nodes("get_attr"):
        notes.annotations(node).pop(Sparsity.key, None)
    found = fxpress.optimize(stripped, "annotate-sparsity")
    assert _note(found, "fc1.weight") == expected
    assert str(found) == str(made)  # the same annotations sparsify wrote, everywhere
    assert fxpress.optimize(made, "annotate-sparsity").trace[-1].modified is False


def test_dense_layers_stay_dense_and_stale_notes_go(x):
    torch.manual_seed(0)
    graph = fxpress.capture(Net().eval(), (x,))
    out = fxpress.optimize(graph, "annotate-sparsity")
    assert out.trace[-1].modified is False and str(out) == str(graph)
    assert out.trace[-1].stats == {"annotated": {}}
    stale = graph.copy()  # a note that no longer holds (the weights were replaced by dense ones)
    notes.annotate(stale.fx.find_nodes(op="get_attr", target="fc2.weight")[0], Sparsity("2:4", (1, 4), 0.5))
    cleaned = fxpress.optimize(stale, "annotate-sparsity")
    assert cleaned.trace[-1].modified and str(cleaned) == str(graph)


def test_options_tolerance_blocks_max_density(pruned, x):
    net = copy.deepcopy(pruned)
    with torch.no_grad():  # a few extra zeros inside the kept 8x1 blocks: block density > element density
        w = net.fc1.weight.reshape(-1)
        nz = torch.nonzero(w).reshape(-1)
        w[nz[::25]] = 0.0  # 4 % of them
    graph = fxpress.capture(net, (x,))
    assert _note(fxpress.optimize(graph, "annotate-sparsity"), "fc1.weight").pattern == "8x1"  # 5 % slack
    strict = fxpress.optimize(graph, "annotate-sparsity{tolerance=0.0}")
    assert _note(strict, "fc1.weight").pattern == "unstructured"
    only_big = fxpress.optimize(graph, "annotate-sparsity{blocks=[16x1],nm=[]}")
    assert _note(only_big, "fc1.weight") is None and _note(only_big, "fc2.weight") is None
    loose = fxpress.optimize(graph, "annotate-sparsity{max-density=0.2}")  # fc2 (0.5) and fc1 (~0.24) are too dense
    assert [n.target for n in loose.nodes("get_attr") if _note(loose, str(n.target))] == ["conv.weight"]
    everything = fxpress.optimize(graph, "annotate-sparsity{max-density=1.0}")
    assert _note(everything, "head.weight") == Sparsity("unstructured", (1, 1), 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("annotate-sparsity{blocks=[2:4]}", r"blocks takes RxC blocks"),
        ("annotate-sparsity{nm=[16x1]}", r"nm takes N:M patterns"),
        ("annotate-sparsity{blocks=[sixteen]}", r"unknown sparsity pattern 'sixteen'"),
        ("annotate-sparsity{tolerance=-0.1}", r"tolerance must be >= 0"),
        ("annotate-sparsity{max-density=0}", r"max-density must be in \(0, 1\]"),
    ],
)
def test_bad_options(text, message):
    with pytest.raises(PipelineError, match=message):
        fxpress.passes.parse_pipeline(text)


def test_bad_options_in_python_are_fxpress_errors():
    for kwargs in ({"blocks": ("2:4",)}, {"nm": ("2x4",)}, {"tolerance": -1.0}, {"max_density": 1.5}):
        with pytest.raises(SparsityError):
            AnnotateSparsity(**kwargs)
