"""fine-tune and `fxpress.train.fine_tune`: zeros stay zero, the loss falls, the input is untouched, gradual
pruning reaches its density exactly, optimizer state cannot resurrect weights, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import nn

import fxpress
from fxpress.errors import FxpressError, InputError, PassError, PipelineError
from fxpress.ir import annotations as notes
from fxpress.passes import FineTune, Sparsify, parse_pipeline
from fxpress.sparse import Sparsity
from fxpress.train import fine_tune, ramp_density, schedule_lr


class Mlp(nn.Module):
    """fc1 [64,64] -> BatchNorm1d -> relu -> head [10,64]: trained on a fixed random teacher's labels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.bn = randomize_bn(nn.BatchNorm1d(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc1(x))))


def _data(batches: int = 6, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    teacher = torch.randn(64, 10, generator=gen)
    out = []
    for _ in range(batches):
        x = torch.randn(size, 64, generator=gen)
        out.append((x, (x @ teacher).argmax(1)))
    return out


@pytest.fixture
def model() -> Mlp:
    torch.manual_seed(0)
    return Mlp().eval()


@pytest.fixture
def graph(model: Mlp) -> fxpress.Graph:
    return fxpress.capture(model, (torch.randn(4, 64),), dynamic_shapes=({0: torch.export.Dim("b")},))


def _loss(g: fxpress.Graph, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return sum(float(F.cross_entropy(g(x), y)) for x, y in data) / len(data)


def test_keeps_zeros_lowers_loss_and_leaves_the_input_alone(model, graph):
    data = _data()
    sparse = fxpress.optimize(graph, "sparsify{density=0.25,pattern=16x1,skip=[head]}")
    before_text, before = str(sparse), {k: v.clone() for k, v in sparse.params().items()}
    history: list[float] = []
    tuned = fine_tune(sparse, data, epochs=4, lr=1e-2, progress=False, history=history)
    assert _loss(tuned, data) < 0.7 * _loss(sparse, data)
    assert len(history) == 4 and history[-1] < history[0]
    w0, w1 = sparse.param("fc1.weight"), tuned.param("fc1.weight")
    assert torch.equal(w0 == 0, w1 == 0)  # the zeros are the same entries, no more, no fewer
    assert not torch.equal(w0, w1) and not torch.equal(sparse.param("head.weight"), tuned.param("head.weight"))
    note = notes.get(tuned.fx.find_nodes(op="get_attr", target="fc1.weight")[0], Sparsity.key)
    assert note == Sparsity("16x1", (16, 1), 0.25)
    for name in ("bn.running_mean", "bn.running_var"):  # captured in eval mode: statistics stay
        assert torch.equal(tuned.param(name), sparse.param(name))
    assert all(not p.requires_grad and p.grad is None for p in tuned.gm.parameters())
    assert str(sparse) == before_text and all(torch.equal(sparse.params()[k], v) for k, v in before.items())
    oracle = copy.deepcopy(model)  # numerics: the tuned graph is the eager model with the tuned weights
    oracle.load_state_dict({k: tuned.param(k) for k in oracle.state_dict()})
    x = torch.randn(5, 64)
    torch.testing.assert_close(tuned(x), oracle(x), rtol=1e-6, atol=1e-6)
    assert "sparsified" in tuned.properties


def test_unannotated_weights_may_leave_zero(graph):
    # only annotated weights are masked: a zeroed but unannotated weight trains freely
    g = graph.copy()
    with torch.no_grad():
        g.param("head.weight")[:, :32] = 0.0
    tuned = fine_tune(g, _data(), epochs=1, lr=1e-2, progress=False)
    assert (tuned.param("head.weight")[:, :32] != 0).any()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradual_pruning_reaches_the_density_exactly(graph, optimizer):
    data = _data()
    seen: list[torch.optim.Optimizer] = []

    def factory(params):
        made = torch.optim.Adam(params, lr=1e-2) if optimizer == "adam" else torch.optim.SGD(params, 0.05, 0.9)
        seen.append(made)
        return made

    history: list[float] = []
    sp = Sparsify(density=0.1, skip=("head",))
    tuned = fine_tune(
        graph, data, epochs=4, lr=1e-2, optimizer=factory, sparsify=sp, ramp_epochs=2, progress=False, history=history
    )
    w = tuned.param("fc1.weight")
    assert int((w != 0).sum()) == round(0.1 * w.numel())  # 410 of 4096
    assert (tuned.param("head.weight") != 0).all()
    assert notes.get(tuned.fx.find_nodes(op="get_attr", target="fc1.weight")[0], Sparsity.key) == Sparsity(
        "unstructured", (1, 1), round(410 / 4096, 6)
    )
    (opt,) = seen
    for value in opt.state[w].values():  # momentum and Adam's moments are zero where the mask is
        if isinstance(value, torch.Tensor) and value.shape == w.shape:
            assert (value[w == 0] == 0).all()
    assert len(history) == 4 and "sparsified" in tuned.properties
    assert (graph.param("fc1.weight") != 0).all()  # the input graph is dense still


def test_the_pass_and_the_request_below_it_prune_alike(graph):
    """fine_tune takes the sparsify pass or the `MagnitudeMasks` request it states (train imports no pass)."""
    from fxpress.sparse import MagnitudeMasks

    request = MagnitudeMasks(density=0.25, pattern="16x1", skip=("head",))
    assert Sparsify(density=0.25, pattern="16x1", skip=("head",)).magnitude_masks() == request
    kwargs = {"epochs": 2, "lr": 1e-2, "ramp_epochs": 1, "progress": False}
    torch.manual_seed(0)
    by_request = fine_tune(graph, _data(), sparsify=request, **kwargs)
    torch.manual_seed(0)
    by_pass = fine_tune(graph, _data(), sparsify=Sparsify(density=0.25, pattern="16x1", skip=("head",)), **kwargs)
    assert str(by_request) == str(by_pass)
    for name, value in by_request.params().items():
        torch.testing.assert_close(value, by_pass.param(name), rtol=0, atol=0)
    with pytest.raises(PassError, match="sparsify must be a MagnitudeMasks"):
        fine_tune(graph, _data(), sparsify="16x1", epochs=2, lr=1e-2, progress=False)


def test_schedules():
    assert ramp_density(0.1, 0, 4) == 1.0  # Zhu & Gupta: cubic from dense to the target
    assert ramp_density(0.1, 2, 4) == pytest.approx(0.1 + 0.9 * 0.5**3)
    assert ramp_density(0.1, 4, 4) == ramp_density(0.1, 9, 4) == ramp_density(0.1, 0, 0) == 0.1
    assert [schedule_lr(1.0, "cosine", e, 4) for e in range(4)] == pytest.approx([1.0, 0.8536, 0.5, 0.1464], abs=1e-4)
    assert schedule_lr(0.1, "constant", 3, 4) == 0.1


def test_cosine_schedule_sets_each_epochs_rate(graph):
    seen: list[torch.optim.Optimizer] = []
    rates: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[override]
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    def factory(params):
        seen.append(Recording(params, lr=0.2))
        return seen[-1]

    fine_tune(graph, _data(2), epochs=4, lr=0.2, optimizer=factory, schedule="cosine", progress=False)
    assert rates == pytest.approx([0.2, 0.2, 0.1707, 0.1707, 0.1, 0.1, 0.0293, 0.0293], abs=1e-4)


def test_pass_in_a_pipeline(graph):
    data = _data()
    observed = fxpress.optimize(graph, "observe")
    out = fxpress.optimize(observed, ["sparsify{pattern=2:4,skip=[head]}", FineTune(data=data, epochs=2, lr=0.01)])
    record = out.trace[-1]
    assert record.pipeline == "fine-tune{epochs=2,lr=0.01}" and record.modified
    assert record.stats["loss_last"] < record.stats["loss_first"]
    assert "fine-tuned" in out.properties and "observed" not in out.properties  # weights moved: observe again
    groups = out.param("fc1.weight").reshape(64, 16, 4)
    assert ((groups != 0).sum(-1) == 2).all()
    assert parse_pipeline(FineTune(data=data, epochs=2, lr=0.01).text()) == [FineTune(epochs=2, lr=0.01)]
    with pytest.raises(
        PipelineError,
        match=r"calibrate requires \[.observed.\]; ran so far: \[.observe., .sparsify., .fine-tune.\]; run observe",
    ):
        fxpress.optimize(out, "calibrate")


# -- bad input ------------------------------------------------------------------------------------


def test_without_data_says_how_to_give_it(graph):
    with pytest.raises(PassError, match=r"fine-tune needs training data.*FineTune\(data=\[\(x, y\), \.\.\.\]"):
        fxpress.optimize(graph, "fine-tune")
    with pytest.raises(PipelineError, match=r"training data cannot be given as text"):
        parse_pipeline("fine-tune{data=batches}")
    with pytest.raises(PassError, match=r"fine-tune needs training data"):
        fine_tune(graph, None, epochs=1, lr=1e-3)  # type: ignore[arg-type]


def test_bad_data_and_options(graph):
    data = _data(2)
    x = data[0][0]
    cases = [
        (InputError, r"data\[0\] has 1 tensors, but the graph takes 1 inputs \(x\) and a target follows", [(x,)]),
        (InputError, r"data\[0\] is a dict", [{"x": x}]),
        (PassError, r"the data is empty at epoch 0", []),
        (PassError, r"the data is empty at epoch 1 \(an exhausted generator", iter(data)),
    ]
    for error, message, bad in cases:
        with pytest.raises(error, match=message):
            fine_tune(graph, bad, epochs=2, lr=1e-3, progress=False)
    options = [
        ({"epochs": 0}, r"epochs must be a positive integer"),
        ({"lr": 0.0}, r"lr must be a positive learning rate"),
        ({"optimizer": "rmsprop"}, r"unknown optimizer 'rmsprop'"),
        ({"schedule": "linear"}, r"unknown schedule 'linear'; choose constant, cosine"),
        ({"ramp_epochs": 1}, r"ramp_epochs=1 needs a sparsify"),
        ({"sparsify": Sparsify(density=0.5), "ramp_epochs": 2}, r"ramp_epochs \(2\) must be below epochs \(2\)"),
        ({"loss": lambda out, t: out.sum() * float("nan")}, r"the loss is nan at epoch 0, batch 0; lower lr"),
    ]
    for kwargs, message in options:
        with pytest.raises(PassError, match=message) as err:
            fine_tune(graph, data, **{"epochs": 2, "lr": 1e-3, "progress": False, **kwargs})
        assert isinstance(err.value, FxpressError)
    for text in ("fine-tune{epochs=0}", "fine-tune{lr=-1}", "fine-tune{optimizer=rmsprop}", "fine-tune{schedule=step}"):
        with pytest.raises(PipelineError):
            parse_pipeline(text)


def test_shuffled_batches_cover_every_sample_in_a_new_seeded_order():
    from fxpress.train import ShuffledBatches

    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    first, again = ShuffledBatches(x, y, batch=4, seed=3), ShuffledBatches(x, y, batch=4, seed=3)
    epoch1, epoch2 = [b[1].tolist() for b in first], [b[1].tolist() for b in first]
    assert len(first) == 3 and [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(i for b in epoch1 for i in b) == list(range(10)) and epoch1 != epoch2
    assert [b[1].tolist() for b in again] == epoch1  # the same seed, the same orders
    for xb, yb in first:
        assert torch.equal(xb[:, 0].long(), yb)  # inputs stay with their labels
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        ShuffledBatches(x, y[:9])
