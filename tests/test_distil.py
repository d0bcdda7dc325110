"""distil and `fxpress.train.distil`: each loss against hand-computed values, the trainer on the digits CNN (the
student given and the teacher are left alone, zeros stay zero, a seed makes it repeatable), the pass in a
pipeline, prune-then-distil, transformer taps, and every bad input (before any training step)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxpress
from fxpress.demo import DigitsCNN, load_digits, train
from fxpress.errors import FxpressError, PassError, PipelineError
from fxpress.passes import Distil, parse_pipeline
from fxpress.train import ShuffledBatches, distil
from fxpress.train.distill_losses import (
    ConvAdapter,
    attention_loss,
    attention_map,
    attention_probability_loss,
    hint_loss,
    make_adapter,
    soft_label_loss,
)

# -- the losses, by hand ----------------------------------------------------------------------------


def test_soft_label_loss_is_t_squared_kl_of_the_teacher_to_the_student():
    # teacher logits [ln 3, 0] -> p_t = [3/4, 1/4]; student [0, 0] -> p_s = [1/2, 1/2]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    s, t = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    assert float(soft_label_loss(s, t, 1.0)) == pytest.approx(kl, rel=1e-6)
    # at T = 2 the teacher's logits 2 ln 3 soften to the same p_t; T^2 = 4 keeps the gradient's size
    assert float(soft_label_loss(s, 2 * t, 2.0)) == pytest.approx(4 * kl, rel=1e-6)
    # a row where student and teacher agree adds 0: the mean over rows halves ("batchmean")
    assert float(soft_label_loss(torch.zeros(2, 2), torch.cat([t, torch.zeros(1, 2)]), 1.0)) == pytest.approx(kl / 2)
    # every axis but the last is a row: [N, L, C] is [N * L, C]
    assert float(soft_label_loss(torch.zeros(1, 1, 2), t[None], 1.0)) == pytest.approx(kl, rel=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            soft_label_loss(s, t, bad)


def test_hint_loss_is_the_mean_squared_error():
    assert float(hint_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2))) == pytest.approx((1 + 4) / 2)


def test_attention_map_and_loss_by_hand():
    # channels [1, 0] and [1, 2] at two positions: mean_c f^2 = [1, 2], normalised [1, 2] / sqrt(5)
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # [1, 2, 1, 2]
    torch.testing.assert_close(attention_map(f), torch.tensor([[1.0, 2.0]]) / math.sqrt(5))
    # the teacher's map of ones is [1, 1] / sqrt(2), whatever its channel count (3 here)
    expect = ((1 / math.sqrt(5) - 1 / math.sqrt(2)) ** 2 + (2 / math.sqrt(5) - 1 / math.sqrt(2)) ** 2) / 2
    assert float(attention_loss(f, torch.ones(1, 3, 1, 2))) == pytest.approx(expect, rel=1e-6)
    assert float(attention_loss(f, -f)) == 0.0  # |f|^p: the sign does not matter


def test_attention_maps_of_different_sizes_meet_at_the_teachers():
    teacher = torch.randn(2, 3, 2, 2)
    student = teacher.repeat_interleave(2, -1).repeat_interleave(2, -2)[:, :2]  # 4x4, each value in a 2x2 block
    # area-averaging the student's 4x4 map of f^2 gives the teacher's 2x2 map of its first two channels
    torch.testing.assert_close(attention_map(student, size=(2, 2)), attention_map(teacher[:, :2]))
    assert float(attention_loss(student, teacher[:, :2])) == pytest.approx(0.0, abs=1e-12)
    up = attention_map(teacher, size=(4, 4))  # smaller than the teacher's: bilinear
    assert up.shape == (2, 16) and torch.allclose(up.norm(dim=1), torch.ones(2))


def test_attention_probability_loss_by_hand():
    ps = torch.tensor([[[[0.5, 0.5]]]])  # [N=1, H=1, Lq=1, Lk=2]
    pt = torch.tensor([[[[0.75, 0.25]]]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(attention_probability_loss(ps, pt)) == pytest.approx(kl, rel=1e-5)
    # two teacher heads [1, 0] and [1/2, 1/2] average to [3/4, 1/4]: against one student head, the same KL
    two = torch.tensor([[[[1.0, 0.0]], [[0.5, 0.5]]]])
    assert float(attention_probability_loss(ps, two)) == pytest.approx(kl, rel=1e-5)
    with pytest.raises(ValueError, match="the same Lq, Lk"):
        attention_probability_loss(ps, torch.ones(1, 1, 1, 3) / 3)


def test_adapters_map_student_shapes_onto_teacher_shapes():
    conv = make_adapter((0, 8, 7, 7), (0, 64, 7, 7))
    assert isinstance(conv, ConvAdapter) and conv.conv.kernel_size == (1, 1) and conv.size is None
    assert conv(torch.randn(2, 8, 7, 7)).shape == (2, 64, 7, 7)
    assert make_adapter((0, 8, 14, 14), (0, 64, 7, 7))(torch.randn(2, 8, 14, 14)).shape == (2, 64, 7, 7)
    linear = make_adapter((0, 5, 16), (0, 5, 32))  # transformer hidden states [N, L, D]
    assert isinstance(linear, nn.Linear) and linear(torch.randn(2, 5, 16)).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="4-D student feature cannot be mapped onto a 2-D"):
        make_adapter((0, 8, 7, 7), (0, 64))
    with pytest.raises(ValueError, match="only the last axis may differ"):
        make_adapter((0, 5, 16), (0, 6, 16))


# -- the trainer on the digits CNN ------------------------------------------------------------------

BATCH = torch.export.Dim("batch", min=1, max=4096)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these models are tiny, and on a shared 2-core host two threads stall (60 s instead of 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def teacher(digits) -> DigitsCNN:
    return train(digits, epochs=8, seed=0)


def _capture(model: nn.Module, digits) -> fxpress.Graph:
    return fxpress.capture(model, (digits.x_test[:8],), dynamic_shapes=({0: BATCH},))


@pytest.fixture
def student(digits) -> fxpress.Graph:
    torch.manual_seed(3)
    return _capture(DigitsCNN(width=4).eval(), digits)


def _batches(digits, n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(ShuffledBatches(digits.x_train, digits.y_train, batch=64, seed=1))[:n]


def _accuracy(graph: fxpress.Graph, digits) -> float:
    return float((graph(digits.x_test).argmax(1) == digits.y_test).float().mean())


def test_distils_a_student_and_leaves_student_and_teacher_alone(teacher, student, digits):
    teacher_state = copy.deepcopy(teacher.state_dict())
    text, params = str(student), {k: v.clone() for k, v in student.params().items()}
    history: list[dict[str, float]] = []
    data = list(ShuffledBatches(digits.x_train, digits.y_train, batch=64, seed=1))
    out = distil(student, teacher, data, epochs=3, lr=1e-2, progress=False, history=history)
    assert _accuracy(out, digits) > 0.8 and _accuracy(student, digits) < 0.3
    assert [sorted(h) for h in history] == [["hard", "loss", "soft"]] * 3
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    for h in history:  # the total is the mix of its parts: (1 - alpha) hard + alpha soft
        assert h["loss"] == pytest.approx(0.1 * h["hard"] + 0.9 * h["soft"], rel=1e-5)
    assert str(out) == text  # same graph, new weights (golden IR: the input's)
    assert str(student) == text and all(torch.equal(student.params()[k], v) for k, v in params.items())
    assert not teacher.training and all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_state.items())
    assert "distilled" in out.properties and all(not p.requires_grad for p in out.gm.parameters())
    oracle = DigitsCNN(width=4).eval()  # numerics: the distilled graph is the eager student with its weights
    oracle.load_state_dict({k: out.param(k) for k in oracle.state_dict()})
    torch.testing.assert_close(out(digits.x_test[:5]), oracle(digits.x_test[:5]), rtol=1e-6, atol=1e-6)


def test_the_trainer_is_a_hand_written_kd_loop(teacher, digits):
    """Numerics: distil's weights after an epoch are those of Hinton's loss written out in eager PyTorch."""
    torch.manual_seed(3)
    model = DigitsCNN(width=4).eval()
    graph, data = _capture(model, digits), _batches(digits, 5)
    out = distil(graph, teacher, data, epochs=1, lr=1e-2, temperature=3.0, alpha=0.7, progress=False)
    oracle = copy.deepcopy(model)
    opt = torch.optim.Adam(oracle.parameters(), lr=1e-2)
    for x, y in data:
        opt.zero_grad()
        s, t = oracle(x), teacher(x).detach()
        kl = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean")
        (0.3 * F.cross_entropy(s, y) + 0.7 * 9 * kl).backward()
        opt.step()
    for name, value in oracle.state_dict().items():
        torch.testing.assert_close(out.param(name), value, rtol=1e-4, atol=1e-5)


def test_hints_and_attention_train_with_their_adapters(teacher, student, digits):
    tg = _capture(teacher, digits)  # a teacher Graph: taps name its nodes as print(tg) shows them
    history: list[dict[str, float]] = []
    kwargs = {"epochs": 2, "lr": 1e-2, "alpha": 0.0, "progress": False, "history": history}
    out = distil(student, tg, _batches(digits), hints=[("%5", "relu_1")], attention=[("2", "%2")], **kwargs)
    assert [sorted(h) for h in history] == [["attention", "hard", "hint", "loss"]] * 2
    assert history[-1]["hint"] < history[0]["hint"]
    assert all(h["loss"] == pytest.approx(h["hard"] + h["hint"] + 500 * h["attention"], rel=1e-5) for h in history)
    assert set(out.params()) == set(student.params())  # the adapter is dropped


def test_a_seed_makes_the_run_repeatable_and_keeps_the_callers_generator(teacher, student, digits):
    def run(seed: int) -> fxpress.Graph:
        return distil(student, teacher, _batches(digits, 3), epochs=1, lr=1e-2, hints=[("%5", "%5")], seed=seed)

    torch.manual_seed(11)
    a, b, c = run(0), run(0), run(1)
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(3))  # the caller's generator is where it was
    assert all(torch.equal(v, b.param(k)) for k, v in a.params().items())
    assert any(not torch.equal(v, c.param(k)) for k, v in a.params().items())  # another adapter init


def test_zeros_of_sparse_weights_stay_zero(teacher, student, digits):
    sparse = fxpress.optimize(student, "sparsify{density=0.3}")
    out = distil(sparse, teacher, _batches(digits, 4), epochs=2, lr=1e-2, progress=False)
    for name in ("classifier.1.weight", "classifier.3.weight"):
        before, after = sparse.param(name), out.param(name)
        assert torch.equal(before == 0, after == 0) and not torch.equal(before, after)
    assert {"sparsified", "distilled"} <= out.properties


def test_prune_then_distil_from_the_unpruned_graph(teacher, digits):
    dense = fxpress.optimize(_capture(teacher, digits), "fold-bn")
    pruned = fxpress.optimize(dense, "prune-channels{ratio=0.5}")
    data = list(ShuffledBatches(digits.x_train, digits.y_train, batch=64, seed=1))
    out = fxpress.optimize(pruned, Distil(teacher=dense, data=data, epochs=2, lr=3e-3))
    assert _accuracy(out, digits) > _accuracy(pruned, digits)
    assert out.param("classifier.1.weight").shape == pruned.param("classifier.1.weight").shape == (32, 256)
    assert out.pipeline == "fold-bn,prune-channels,distil{epochs=2,lr=0.003}"
    assert {"channels-pruned", "distilled"} <= out.properties


def test_the_pass_in_a_pipeline(teacher, student, digits):
    data = _batches(digits, 4)
    observed = fxpress.optimize(student, "observe")
    p = Distil(teacher=teacher, data=data, epochs=2, alpha=0.5, hints=[("%5", "%5")], lr=0.01)
    out = fxpress.optimize(observed, p)
    record = out.trace[-1]
    assert record.pipeline == "distil{epochs=2,lr=0.01,alpha=0.5,hints=[%5:%5]}" and record.modified
    assert record.stats["loss_last"] < record.stats["loss_first"]
    assert "distilled" in out.properties and "observed" not in out.properties  # weights moved: observe again
    assert parse_pipeline(p.text()) == [Distil(epochs=2, alpha=0.5, hints=("%5:%5",), lr=0.01)]
    assert parse_pipeline("distil{hints=[ %5 : %5 ],attention=[2:2]}") == [
        Distil(hints=[("%5", "%5")], attention=["2:2"])
    ]
    with pytest.raises(PipelineError, match=r"calibrate requires \[.observed.\]; ran so far: \[.observe., .distil.\]"):
        fxpress.optimize(out, "calibrate")


class TinyAttention(nn.Module):
    """One self-attention head with an explicit softmax (so its probabilities are a node) and a classifier."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        q, k, v = self.qkv(h).chunk(3, -1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)[:, None]  # [N, 1, L, L]
        return self.head((probs[:, 0] @ v).mean(1))


def test_transformer_taps_attention_probabilities_and_hidden_states():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 4)
    s, t = (fxpress.capture(TinyAttention(w).eval(), (x,)) for w in (8, 16))
    node = next(ln.split(" = ")[0].strip() for ln in str(s).splitlines() if "softmax" in ln)  # the probabilities
    history: list[dict[str, float]] = []
    data = [(x, torch.tensor([0, 1, 2, 0]))] * 3
    distil(s, t, data, epochs=2, lr=1e-2, alpha=0.0, attention=[(node, node)], hints=[("%0", "%0")], history=history)
    assert history[-1]["attention"] < history[0]["attention"] and history[-1]["hint"] < history[0]["hint"]


# -- bad input, each before any step ----------------------------------------------------------------


def _counting_adam(steps: list[int]):
    def factory(params):
        class Counting(torch.optim.Adam):
            def step(self, closure=None):  # type: ignore[override]
                steps.append(1)
                return super().step(closure)

        return Counting(params, lr=1e-3)

    return factory


def test_outputs_of_different_shapes_fail_before_any_step(student, digits):
    steps: list[int] = []
    wide = DigitsCNN()
    wide.classifier[3] = nn.Linear(64, 12)
    with pytest.raises(
        PassError, match=r"the teacher's output \[64, 12\] and the student's \[64, 10\] differ in shape"
    ):
        distil(student, wide.eval(), _batches(digits), epochs=1, lr=1e-3, optimizer=_counting_adam(steps))
    assert steps == []


def test_unknown_taps_list_the_near_names(teacher, student, digits):
    cases = [
        (("%55", "%5"), r"tap '%55' is not a node of the student graph \(its computed values are %0..%10;"),
        (("%5", "relu_7"), r"tap 'relu_7' is not a node of the teacher graph"),
    ]
    for pair, message in cases:
        with pytest.raises(PassError, match=message) as err:
            distil(student, teacher, _batches(digits), epochs=1, lr=1e-3, hints=[pair])
    text = str(err.value)
    assert "near names:" in text and "%5 = aten.relu(%4) : f32[s0,32,8,8]   (fx name relu_1)" in text
    with pytest.raises(PassError, match=r"near names:\n    %5 = aten.relu\(%4\)") as err:
        distil(student, teacher, _batches(digits), epochs=1, lr=1e-3, attention=[("%5", "%5x")])


def test_taps_that_are_not_float_values(teacher, student, digits):
    class MaxOfRows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1).max(dim=-1, keepdim=True).values.expand(-1, 8))

    odd = fxpress.capture(MaxOfRows().eval(), (digits.x_test[:8],))
    data = [(digits.x_test[:8], digits.y_test[:8])]
    cases = [
        (student, ("%x", "%5"), r"tap '%x' names an input of the student graph"),
        (student, ("%5", "features.0.weight"), r"tap 'features.0.weight' names a parameter of the teacher graph"),
        (odd, ("%1", "%5"), r"tap '%1' of the student graph is a tuple, not a float tensor"),
    ]
    for graph, pair, message in cases:
        with pytest.raises(PassError, match=message):
            distil(
                graph, teacher if graph is student else _capture(teacher, digits), data, epochs=1, lr=1e-3, hints=[pair]
            )


def test_pairs_that_cannot_be_compared(teacher, student, digits):
    data = _batches(digits)
    with pytest.raises(PassError, match=r"hint pair \('%5', '%8'\): a 4-D student feature cannot be mapped onto a 2-D"):
        distil(student, teacher, data, epochs=1, lr=1e-3, hints=[("%5", "%8")])
    with pytest.raises(
        PassError,
        match=r"attention pairs two conv features .* got aten.relu f32\[s0,64\] and aten.relu f32\[s0,32,8,8\]",
    ):
        distil(student, teacher, data, epochs=1, lr=1e-3, attention=[("%9", "%5")])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, r"temperature must be > 0"),
        ({"temperature": -2.0}, r"temperature must be > 0"),
        ({"alpha": 1.5}, r"alpha \(the weight of the soft labels\) must be in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"alpha .* must be in \[0, 1\]"),
        ({"epochs": 0}, r"epochs must be a positive integer"),
        ({"lr": 0.0}, r"lr must be a positive learning rate"),
        ({"hint_weight": -1.0}, r"hint_weight must be a finite number >= 0"),
        ({"alpha": 0.0}, r"with alpha=0 and no hints or attention pairs the teacher teaches nothing"),
        ({"hints": [("%5",)]}, r"hints must be a list of \(student node, teacher node\) pairs"),
        ({"hints": "%5:%5"}, r"hints must be a list of"),
        ({"schedule": "step"}, r"unknown schedule 'step'"),
        ({"seed": 1.5}, r"seed must be an integer or None"),
    ],
)
def test_bad_options_name_what_to_fix(teacher, student, digits, kwargs, message):
    with pytest.raises(PassError, match=message) as err:
        distil(student, teacher, _batches(digits), **{"epochs": 1, "lr": 1e-3, **kwargs})
    assert isinstance(err.value, FxpressError)


def test_bad_teachers_and_missing_inputs(student, digits):
    data = _batches(digits)
    with pytest.raises(PassError, match=r"the teacher must be an fxpress Graph or a torch nn.Module, got str"):
        distil(student, "resnet", data, epochs=1, lr=1e-3)  # type: ignore[arg-type]

    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :10] + y

    two = fxpress.capture(TwoInputs(), (digits.x_test[:8], torch.zeros(8, 10)))
    with pytest.raises(PassError, match=r"the teacher takes 2 inputs \(x, y\) but the student 1 \(x\)"):
        distil(student, two, data, epochs=1, lr=1e-3)
    with pytest.raises(PassError, match=r"distil needs a teacher and training data.*Distil\(teacher=model"):
        fxpress.optimize(student, "distil")
    with pytest.raises(PassError, match=r"distil needs training data, and"):
        fxpress.optimize(student, Distil(teacher=student))
    for text, message in [
        ("distil{temperature=0}", "temperature must be > 0"),
        ("distil{alpha=2}", r"alpha .* must be in \[0, 1\]"),
        ("distil{epochs=0}", "epochs must be >= 1"),
        ("distil{hints=[%5]}", "hints are student:teacher node pairs such as %5:%7"),
        ("distil{teacher=resnet}", "cannot be given as text"),
    ]:
        with pytest.raises(PipelineError, match=message):
            parse_pipeline(text)


def test_losses_take_the_default_cross_entropy(teacher, student, digits):
    """`loss` replaces the hard part only: with alpha=1 it does not count, with alpha=0 it is all there is."""
    data = _batches(digits, 2)
    history: list[dict[str, float]] = []
    distil(
        student,
        teacher,
        data,
        epochs=1,
        lr=1e-3,
        alpha=1.0,
        loss=lambda o, y: F.cross_entropy(o, y) * 0,
        history=history,
    )
    assert history[0]["hard"] == 0.0 and history[0]["loss"] == pytest.approx(history[0]["soft"])
