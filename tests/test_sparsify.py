"""sparsify: golden IR, exact densities and patterns per layer, global vs per-layer, numerics, leave-alone, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import FxpressError, PipelineError
from fxpress.ir import annotations as notes
from fxpress.passes import Sparsify
from fxpress.sparse import Sparsity, SparsityError, parse_pattern


class Net(nn.Module):
    """conv [16,8,3,3] -> relu -> flatten -> fc1 [64,256] -> relu -> fc2 [32,64] -> head [10,32]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(torch.relu(self.conv(x)), 1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(y)))))


WEIGHTS = ("conv.weight", "fc1.weight", "fc2.weight", "head.weight")


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))


def _zeroed(model: nn.Module, graph: fxpress.Graph) -> nn.Module:
    """The oracle: the eager model with exactly the graph's zero weights set to zero."""
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for name in WEIGHTS:
            oracle.get_parameter(name).masked_fill_(graph.param(name) == 0, 0.0)
    return oracle


GOLDEN = """\
graph(%x: f32[2,8,4,4]) {
  %conv.bias = param f32[16]
  %conv.weight = param f32[16,8,3,3]  # sparsity 16x1 density=0.25
  %fc1.bias = param f32[64]
  %fc1.weight = param f32[64,256]  # sparsity 16x1 density=0.25
  %fc2.bias = param f32[32]
  %fc2.weight = param f32[32,64]  # sparsity 16x1 density=0.25
  %head.bias = param f32[10]
  %head.weight = param f32[10,32]
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1]) : f32[2,16,4,4]
  %1 = aten.relu(%0) : f32[2,16,4,4]
  %2 = aten.flatten.using_ints(%1, 1) : f32[2,256]
  %3 = aten.linear(%2, %fc1.weight, %fc1.bias) : f32[2,64]
  %4 = aten.relu(%3) : f32[2,64]
  %5 = aten.linear(%4, %fc2.weight, %fc2.bias) : f32[2,32]
  %6 = aten.relu(%5) : f32[2,32]
  %7 = aten.linear(%6, %head.weight, %head.bias) : f32[2,10]
  return %7
}"""


def test_golden_ir_and_numerics(net, x):
    graph = fxpress.capture(net, (x,))
    out = fxpress.optimize(graph, "sparsify{density=0.25,pattern=16x1,skip=[head]}")
    assert str(out) == GOLDEN
    assert out.trace[-1].modified and "sparsified" in out.properties
    assert out.trace[-1].stats == {"weights": 3, "density": 0.25}
    torch.testing.assert_close(out(x), _zeroed(net, out)(x), rtol=0, atol=0)  # only weights changed: bit-exact
    assert (out(x) - net(x)).abs().max() > 1e-3  # something was really zeroed
    for name in WEIGHTS:  # still frozen parameters, under the same names
        p = out.param(name)
        assert isinstance(p, nn.Parameter) and not p.requires_grad
    out.export()


def _blocks(w: torch.Tensor, r: int, c: int) -> torch.Tensor:
    m = w.reshape(w.shape[0], -1)
    return m.reshape(m.shape[0] // r, r, m.shape[1] // c, c).permute(0, 2, 1, 3).reshape(-1, r * c)


@pytest.mark.parametrize(("pattern", "r", "c"), [("16x1", 16, 1), ("8x2", 8, 2), ("unstructured", 1, 1)])
@pytest.mark.parametrize("density", [0.1, 0.3])
def test_blocks_exact_per_layer(net, x, pattern, r, c, density):
    graph = fxpress.capture(net, (x,))
    out = fxpress.optimize(graph, Sparsify(density=density, pattern=pattern, skip=("head",)))
    for name in WEIGHTS[:3]:
        before, after = _blocks(graph.param(name), r, c), _blocks(out.param(name), r, c)
        nonzero = (after != 0).sum(1)
        assert set(nonzero.tolist()) <= {0, r * c}  # every block all zero or kept whole
        kept = nonzero > 0
        assert int(kept.sum()) == max(1, math.floor(density * len(kept) + 0.5))
        assert torch.equal(after[kept], before[kept])  # kept blocks untouched
        norms = before.norm(dim=1)
        assert norms[kept].min() >= norms[~kept].max()  # the largest blocks by L2 norm survive
        note = notes.get(out.fx.find_nodes(op="get_attr", target=name)[0], "sparsity")
        assert note == Sparsity(parse_pattern(pattern).text, (r, c), round(float(kept.float().mean()), 6))
    assert torch.equal(out.param("head.weight"), graph.param("head.weight"))
    torch.testing.assert_close(out(x), _zeroed(net, out)(x), rtol=0, atol=0)


@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_n_m(net, x, pattern, n, m):
    out = fxpress.optimize(fxpress.capture(net, (x,)), f"sparsify{{pattern={pattern}}}")
    for name in WEIGHTS:  # head [10, 32]: the N:M groups run along the 32 inputs
        w, orig = out.param(name), net.get_parameter(name).detach()
        groups = w.reshape(w.shape[0], -1, m)
        assert ((groups != 0).sum(-1) == n).all()  # exactly N nonzeros in every group of M
        kept = groups != 0
        mags = orig.reshape(groups.shape).abs()
        assert (mags.masked_fill(~kept, math.inf).amin(-1) >= mags.masked_fill(kept, -1).amax(-1)).all()
        note = notes.get(out.fx.find_nodes(op="get_attr", target=name)[0], "sparsity")
        assert note == Sparsity(pattern, (1, m), n / m)
    torch.testing.assert_close(out(x), _zeroed(net, out)(x), rtol=0, atol=0)


def test_global_ranks_all_layers_together(net, x):
    graph = fxpress.capture(net, (x,))
    with torch.no_grad():  # make fc2 clearly the most important layer
        graph.param("fc2.weight").mul_(10.0)
    out = fxpress.optimize(graph, "sparsify{density=0.2,scope=global}")
    per_layer = fxpress.optimize(graph, "sparsify{density=0.2}")
    total = sum(graph.param(n).numel() for n in WEIGHTS)
    kept = {n: int((out.param(n) != 0).sum()) for n in WEIGHTS}
    assert sum(kept.values()) == math.floor(0.2 * total + 0.5)
    assert kept["fc2.weight"] > 0.9 * graph.param("fc2.weight").numel()  # 10x larger: nearly all kept
    assert kept["fc1.weight"] < 0.2 * graph.param("fc1.weight").numel()
    survivors = torch.cat([graph.param(n)[out.param(n) != 0].abs() for n in WEIGHTS])
    dropped = torch.cat([graph.param(n)[out.param(n) == 0].abs() for n in WEIGHTS])
    assert survivors.min() >= dropped.max()  # one threshold for every layer
    for n in WEIGHTS:  # per layer: each layer keeps its own 20 %
        w = per_layer.param(n)
        assert int((w != 0).sum()) == math.floor(0.2 * w.numel() + 0.5)
    assert out.trace[-1].stats["density"] == pytest.approx(0.2, abs=1e-3)


def test_second_run_and_graph_untouched(net, x):
    graph = fxpress.capture(net, (x,))
    text_before, params_before = str(graph), {k: v.clone() for k, v in graph.params().items()}
    once = fxpress.optimize(graph, "sparsify{density=0.1,pattern=16x1,skip=[head]}")
    twice = fxpress.optimize(once, "sparsify{density=0.1,pattern=16x1,skip=[head]}")
    assert twice.trace[-1].modified is False and str(twice) == str(once)
    assert str(graph) == text_before and all(torch.equal(graph.params()[k], v) for k, v in params_before.items())
    assert all(net.get_parameter(n).count_nonzero() == net.get_parameter(n).numel() for n in WEIGHTS)
    lower = fxpress.optimize(once, "sparsify{density=0.05,pattern=16x1,skip=[head]}")
    assert lower.trace[-1].modified and int((lower.param("fc1.weight") != 0).sum()) == 51 * 16  # 5 % of 1024 blocks


def test_layers_regex_and_leave_alone(net, x):
    graph = fxpress.capture(net, (x,))
    out = fxpress.optimize(graph, "sparsify{density=0.5,layers=fc.*}")
    assert {n for n in WEIGHTS if (out.param(n) == 0).any()} == {"fc1.weight", "fc2.weight"}
    by_op = fxpress.optimize(graph, "sparsify{density=0.5,layers=conv2d}")  # the op node's name works too
    assert {n for n in WEIGHTS if (by_op.param(n) == 0).any()} == {"conv.weight"}

    class Computed(nn.Module):  # a weight computed in the graph is not a parameter: left dense
        def __init__(self) -> None:
            super().__init__()
            self.w, self.s = nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.rand(8, 1))

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(v, self.w * self.s)

    alone = fxpress.capture(Computed().eval(), (torch.randn(2, 8),))
    result = fxpress.optimize(alone, "sparsify")
    assert result.trace[-1].modified is False and str(result) == str(alone)


# -- bad input ------------------------------------------------------------------------------------


def test_block_that_does_not_divide_names_layer_shape_and_block(net, x):
    graph = fxpress.capture(net, (x,))
    with pytest.raises(
        SparsityError, match=r"16x1: block 16x1 does not divide the weight of layer 'head', shape \[10, 32\]"
    ):
        fxpress.optimize(graph, "sparsify{pattern=16x1}")
    with pytest.raises(SparsityError, match=r"layer 'conv', shape \[16, 8, 3, 3\] \(as a matrix \[16, 72\]\)"):
        fxpress.optimize(graph, "sparsify{pattern=1x16,layers=conv}")
    with pytest.raises(
        SparsityError, match=r"groups of 8 does not divide the weight of layer 'linear', shape \[10, 12\]"
    ):
        fxpress.optimize(fxpress.capture(nn.Linear(12, 10).eval(), (torch.randn(2, 12),)), "sparsify{pattern=4:8}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sparsify{density=0}", r"density must be in \(0, 1\]"),
        ("sparsify{density=1.5}", r"density must be in \(0, 1\]"),
        ("sparsify{density=nan}", r"density must be in \(0, 1\]"),
        ("sparsify{pattern=blocks}", r"unknown sparsity pattern 'blocks'; write 'unstructured', N:M"),
        ("sparsify{pattern=4:2}", r"N:M needs 1 <= N <= M .* N=4, M=2"),
        ("sparsify{pattern=0x4}", r"block sizes must be positive"),
        ("sparsify{pattern=2:4,density=0.1}", r"pattern 2:4 keeps 0.5 of the weights"),
        ("sparsify{scope=everything}", r"scope must be one of per-layer, global"),
        ("sparsify{skip=[(]}", r"bad regex"),
    ],
)
def test_bad_options(text, message):
    with pytest.raises(PipelineError, match=message):
        fxpress.passes.parse_pipeline(text)


def test_bad_requests_are_fxpress_errors(net, x):
    with pytest.raises(SparsityError) as err:
        Sparsify(density=0.0)
    assert isinstance(err.value, FxpressError)
    with pytest.raises(
        SparsityError, match=r"layers 'fc9' matches no linear or conv weight; the layers are: conv, fc1"
    ):
        fxpress.optimize(fxpress.capture(net, (x,)), "sparsify{layers=fc9}")


def test_hash_sharing_the_zeros_break_is_dropped_the_weights_kept():
    """Zeroing part of a hash bucket breaks sign * buckets[hash]: the weight stays as sparsified, stored dense."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3)).eval(), torch.randn(2, 20)
    hashed = fxpress.optimize(fxpress.capture(model, (x,)), "share-weights{method=hash,ratio=0.25}")
    out = fxpress.optimize(hashed, "sparsify{density=0.1}")  # the manager verifies: no stale 'shared'
    for name in ("0.weight", "2.weight"):
        node = next(n for n in out.nodes("get_attr") if n.target == name)
        assert notes.get(node, "shared") is None
        assert isinstance(notes.get(node, Sparsity.key), Sparsity)
        before, after = hashed.param(name), out.param(name)
        # bit-exact: the hashed values where kept, zeros elsewhere; 10 % kept (by hand: round(0.1 * numel))
        assert torch.equal(after, torch.where(after != 0, before, torch.zeros(())))
        assert int((after != 0).sum()) == round(0.1 * before.numel())
    assert out.trace[-1].stats["unshared"] == 2
    assert "weights-shared" in out.properties and "sparsified" in out.properties
    # leave alone: density 1 zeroes nothing, so the hash sharing holds and stays
    dense = fxpress.optimize(hashed, "sparsify{density=1.0}")
    assert "unshared" not in dense.trace[-1].stats
    assert str(dense).count("shared hash") == 2
