"""share-weights: k-means and hashing by hand, golden IR, numerics, training keeps sharing, composition, bad input."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import PassError, PipelineError, VerifyError
from fxpress.ir import annotations as notes
from fxpress.passes import Calibrate, Observe, Pass, PassResult, ShareWeights
from fxpress.runtime.hashing import hash_buckets
from fxpress.sharing import SharedWeights, SharingError, kmeans_1d
from fxpress.sparse import MagnitudeMasks
from fxpress.train import fine_tune


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
    return torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def data(x) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 8, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(4)]


def _with_weights(model: nn.Module, graph: fxpress.Graph) -> nn.Module:
    """The oracle: the eager model holding the graph's weights."""
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for name in WEIGHTS:
            oracle.get_parameter(name).copy_(graph.param(name))
    return oracle


def _note(graph: fxpress.Graph, name: str) -> SharedWeights | None:
    note = notes.get(graph.fx.find_nodes(op="get_attr", target=name)[0], SharedWeights.key)
    assert note is None or isinstance(note, SharedWeights)
    return note


def _distinct_nonzero(w: torch.Tensor) -> int:
    return int(torch.unique(w[w != 0]).numel())


# -- k-means by hand ------------------------------------------------------------------------------


def test_kmeans_two_clear_groups():
    # linear init: [0, 12]; the midpoint 6 splits {0, 1, 2} | {10, 11, 12}; means 1 and 11; nothing moves after
    centroids, assignment = kmeans_1d(torch.tensor([11.0, 0.0, 12.0, 1.0, 10.0, 2.0]), 2)
    assert centroids.tolist() == [1.0, 11.0]
    assert assignment.tolist() == [1, 0, 1, 0, 1, 0]


def test_kmeans_linear_init_keeps_the_large_weight_its_own_centroid():
    # init linspace(1, 100, 3) = [1, 50.5, 100]; midpoints 25.75, 75.25: {1, 2, 3, 4} | {} | {100};
    # the first centroid moves to 2.5, the empty one stays at 50.5, and the next midpoints move no weight
    centroids, assignment = kmeans_1d(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]), 3)
    assert centroids.tolist() == [2.5, 50.5, 100.0]
    assert assignment.tolist() == [0, 0, 0, 0, 2]


def test_kmeans_is_deterministic_and_fast_enough():
    w = torch.randn(300, 784, generator=torch.Generator().manual_seed(0))
    a, b = kmeans_1d(w, 64), kmeans_1d(w.clone(), 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # each centroid is the mean of its members (Lloyd's fixed point)
    for j in (0, 31, 63):
        torch.testing.assert_close(a[0][j], w.flatten().double()[a[1] == j].mean())


# -- the pass ------------------------------------------------------------------------------------

GOLDEN = """\
graph(%x: f32[8,8,4,4]) {
  %conv.bias = param f32[16]
  %conv.weight = param f32[16,8,3,3]  # shared kmeans clusters=16 bits=4 zeros-apart
  %fc1.bias = param f32[64]
  %fc1.weight = param f32[64,256]  # shared kmeans clusters=16 bits=4 zeros-apart
  %fc2.bias = param f32[32]
  %fc2.weight = param f32[32,64]  # shared kmeans clusters=16 bits=4 zeros-apart
  %head.bias = param f32[10]
  %head.weight = param f32[10,32]
  %0 = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1]) : f32[8,16,4,4]
  %1 = aten.relu(%0) : f32[8,16,4,4]
  %2 = aten.flatten.using_ints(%1, 1) : f32[8,256]
  %3 = aten.linear(%2, %fc1.weight, %fc1.bias) : f32[8,64]
  %4 = aten.relu(%3) : f32[8,64]
  %5 = aten.linear(%4, %fc2.weight, %fc2.bias) : f32[8,32]
  %6 = aten.relu(%5) : f32[8,32]
  %7 = aten.linear(%6, %head.weight, %head.bias) : f32[8,10]
  return %7
}"""


def test_golden_ir_and_numerics(net, x):
    graph = fxpress.capture(net, (x,))
    out = fxpress.optimize(graph, "share-weights{bits=4,skip=[head]}")
    assert str(out) == GOLDEN
    assert out.trace[-1].modified and "weights-shared" in out.properties
    assert out.trace[-1].stats["weights"] == 3 and 0 < out.trace[-1].stats["rmse"] < 0.05
    for name in WEIGHTS[:3]:
        w, before = out.param(name), graph.param(name)
        assert torch.unique(w).numel() <= 16
        # every weight took the centroid nearest to it among those of its own weight
        centroids = torch.unique(w)
        nearest = centroids[(before.flatten()[:, None] - centroids[None, :]).abs().argmin(1)]
        assert torch.equal(nearest.view_as(w), w)
        assert isinstance(out.param(name), nn.Parameter) and not out.param(name).requires_grad
    assert torch.equal(out.param("head.weight"), graph.param("head.weight"))
    torch.testing.assert_close(out(x), _with_weights(net, out)(x), rtol=0, atol=0)  # only weights changed
    assert (out(x) - net(x)).abs().max() > 1e-4
    again = fxpress.optimize(out, "share-weights{bits=4,skip=[head]}")
    assert not again.trace[-1].modified  # <= 16 values: already k-means' optimum


def test_clusters_option_and_fewer_bits_recluster(net, x):
    graph = fxpress.capture(net, (x,))
    out = fxpress.optimize(graph, [ShareWeights(clusters=5, layers="fc1")])
    assert _note(out, "fc1.weight") == SharedWeights("kmeans", 5, 3, 0, True)
    assert torch.unique(out.param("fc1.weight")).numel() == 5
    assert all(_note(out, n) is None for n in WEIGHTS if n != "fc1.weight")  # leaves the rest alone
    fewer = fxpress.optimize(out, "share-weights{bits=1,layers=fc1}")
    assert fewer.trace[-1].modified and torch.unique(fewer.param("fc1.weight")).numel() == 2


def test_pruned_zeros_stay_apart(net, x):
    pruned = fxpress.optimize(fxpress.capture(net, (x,)), "sparsify{density=0.25}")
    out = fxpress.optimize(pruned, "share-weights{bits=3}")
    for name in WEIGHTS:
        w = out.param(name)
        assert torch.equal(w == 0, pruned.param(name) == 0)  # the same zeros, and no centroid became one
        assert _distinct_nonzero(w) <= 8
    assert "sparsity" in str(out)  # the Sparsity annotations still hold
    # linear init over [min, max]: the centroids that start in the pruned gap around 0 stay empty
    assert 0 in out.param("fc1.weight") and torch.unique(out.param("fc1.weight")).numel() < 9
    together = fxpress.optimize(pruned, "share-weights{bits=3,zeros=false}")
    assert torch.unique(together.param("fc1.weight")).numel() <= 8  # the zeros took one of the 8 clusters
    assert _note(together, "fc1.weight") == SharedWeights("kmeans", 8, 3, 0, False)


def test_hash_is_sign_times_buckets(net, x):
    graph = fxpress.capture(net, (x,))
    out = fxpress.optimize(graph, "share-weights{method=hash,ratio=0.125,seed=3}")
    for k, name in enumerate(WEIGHTS):
        w, before = out.param(name), graph.param(name).double()
        buckets = round(0.125 * w.numel())
        assert _note(out, name) == SharedWeights("hash", buckets, 0, 3 + k, False)
        index, sign = hash_buckets(tuple(w.shape), buckets, 3 + k)
        index, sign = torch.from_numpy(index), torch.from_numpy(sign).double()
        # each bucket the mean of sign * w over its members (least squares), then w = sign * b[index]
        b = torch.zeros(buckets, dtype=torch.float64).index_add_(0, index.flatten(), (sign * before).flatten())
        b = (b / torch.bincount(index.flatten(), minlength=buckets).clamp(min=1)).float()
        assert torch.equal(w, b[index] * sign.float())
    torch.testing.assert_close(out(x), _with_weights(net, out)(x), rtol=0, atol=0)
    again = fxpress.optimize(out, "share-weights{method=hash,ratio=0.125,seed=3}")
    assert not again.trace[-1].modified


# -- training keeps the sharing ---------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fine_tune_keeps_kmeans_and_pruned_zeros(net, x, data, optimizer):
    shared = fxpress.optimize(fxpress.capture(net, (x,)), "sparsify{density=0.5},share-weights{bits=3}")
    tuned = fine_tune(shared, data, epochs=2, lr=0.01, optimizer=optimizer, weight_decay=1e-4, progress=False)
    for name in WEIGHTS:
        w = tuned.param(name)
        assert _distinct_nonzero(w) <= 8
        assert torch.equal(w == 0, shared.param(name) == 0)
        assert not torch.equal(w, shared.param(name))  # the centroids moved
    tuned.verify()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fine_tune_keeps_the_hash(net, x, data, optimizer):
    shared = fxpress.optimize(fxpress.capture(net, (x,)), "share-weights{method=hash,ratio=0.25}")
    tuned = fine_tune(shared, data, epochs=2, lr=0.01, optimizer=optimizer, progress=False)
    for name in WEIGHTS:
        note = _note(tuned, name)
        assert note is not None and note.problem(tuned.param(name)) is None
        assert not torch.equal(tuned.param(name), shared.param(name))
    tuned.verify()


def test_sgd_moves_a_centroid_by_lr_times_its_members_gradient_sum(net, x, data):
    shared = fxpress.optimize(fxpress.capture(net, (x,)), "sparsify{density=0.5},share-weights{bits=2}")
    lr, (inputs, target) = 0.01, data[0]
    oracle = _with_weights(net, shared)
    nn.functional.cross_entropy(oracle(inputs), target).backward()
    tuned = fine_tune(shared, [(inputs, target)], epochs=1, lr=lr, optimizer="sgd", progress=False)
    for name in WEIGHTS:  # one step: SGD's momentum buffer is the gradient itself
        w, grad, new = shared.param(name), oracle.get_parameter(name).grad, tuned.param(name)
        for c in torch.unique(w[w != 0]):
            members = w == c
            expected = c - lr * grad[members].sum()
            torch.testing.assert_close(new[members], expected.expand(int(members.sum())), rtol=1e-5, atol=1e-6)
        assert (new[w == 0] == 0).all()


# -- composition -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BumpOne(Pass):
    """A test-only pass that changes one weight of fc1 and leaves its annotations as they were."""

    name = "bump-one"

    def run(self, graph: fxpress.Graph, am: object) -> PassResult:
        node = next(n for n in graph.nodes("get_attr") if n.target == "fc1.weight")
        w = graph.param(node).clone()
        w.view(-1)[0] += 1.0
        graph.replace_param(node, w)
        return PassResult(graph, modified=True)


def test_a_later_pass_that_breaks_the_hash_is_caught_where_it_happens(net, x):
    hashed = fxpress.optimize(fxpress.capture(net, (x,)), "share-weights{method=hash}")
    with pytest.raises(VerifyError, match=r"after pass bump-one.*shared.*differ from sign \* buckets"):
        fxpress.optimize(hashed, [_BumpOne()])
    # sparsify, which zeroes part of buckets, drops the sharing it breaks (tests/test_sparsify.py)
    out = fxpress.optimize(hashed, "sparsify{density=0.5}")
    assert "shared" not in str(out) and out.trace[-1].stats["unshared"] == 4


def test_pruning_while_training_a_hashed_weight_is_refused(net, x, data):
    hashed = fxpress.optimize(fxpress.capture(net, (x,)), "share-weights{method=hash,layers=fc1}")
    with pytest.raises(PassError, match=r"fine-tune: weight fc1.weight no longer holds its sharing"):
        fine_tune(hashed, data, epochs=2, lr=0.01, sparsify=MagnitudeMasks(0.5), ramp_epochs=1, progress=False)


def test_compiled_shared_float_graph_matches_eager(net, x):
    shared = fxpress.optimize(fxpress.capture(net, (x,)), "sparsify{density=0.3},share-weights{bits=4}")
    compiled = fxpress.compile(shared, target="x86", num_threads=1)
    np.testing.assert_allclose(compiled(x.numpy()), shared(x).numpy(), rtol=1e-5, atol=1e-5)


def test_shared_then_int8_compiles_bit_exact(net, x):
    calib = [(torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(s)),) for s in range(4)]
    graph = fxpress.capture(net, (x,))
    q = fxpress.optimize(graph, [ShareWeights(bits=4), Observe(per_channel=True), Calibrate(data=calib), "fold-qdq"])
    assert "weights-shared" in q.properties and "quantized" in q.properties
    compiled = fxpress.compile(q, target="x86", num_threads=1)
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("share-weights{clusters=1}", r"clusters must be >= 2"),
        ("share-weights{bits=0}", r"bits must be 1-8"),
        ("share-weights{bits=9}", r"bits must be 1-8"),
        ("share-weights{bits=2,clusters=5}", r"5 clusters need more than 2 bits"),
        ("share-weights{clusters=300}", r"at most 256"),
        ("share-weights{method=hash,ratio=1.0}", r"ratio must be in \(0, 1\)"),
        ("share-weights{method=hash,ratio=0}", r"ratio must be in \(0, 1\)"),
        ("share-weights{method=hash,bits=4}", r"bits and clusters are k-means options"),
        ("share-weights{ratio=0.5}", r"ratio and seed are hash options"),
        ("share-weights{method=lloyd}", r"method must be one of kmeans, hash"),
        ("share-weights{layers=fc(}", r"bad regex"),
    ],
)
def test_bad_options(text, match):
    with pytest.raises(PipelineError, match=match):
        fxpress.passes.parse_pipeline(text)


def test_bad_options_in_python_are_sharing_errors():
    with pytest.raises(SharingError, match="bits must be 1-8"):
        ShareWeights(bits=12)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("share-weights{layers=fc9}", r"layers 'fc9' matches no linear or conv weight; did you mean 'fc2' or 'fc1'\?"),
        ("share-weights{skip=[haed]}", r"skip 'haed' matches no linear or conv weight; did you mean 'head'"),
    ],
)
def test_a_layer_that_does_not_exist(net, x, text, match):
    with pytest.raises(SharingError, match=match) as info:
        fxpress.optimize(fxpress.capture(net, (x,)), text)
    assert "the layers are: conv, fc1, fc2, head" in str(info.value)


def test_more_clusters_than_surviving_weights(net, x):
    pruned = fxpress.optimize(fxpress.capture(net, (x,)), "sparsify{density=0.05,layers=head}")  # 16 of 320 left
    with pytest.raises(SharingError, match=r"layer head: 32 clusters for 16 surviving \(nonzero\) weights"):
        fxpress.optimize(pruned, "share-weights{bits=5}")
    fxpress.optimize(pruned, "share-weights{bits=5,zeros=false}")  # the zeros count as weights: 320
