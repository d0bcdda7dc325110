"""Pipeline fuzzing (issue 20, item 3): random well-formed pipelines over small zoo models, property-checked.

A seeded generator (`random.Random(seed)`, no new dependency) builds pipelines from the registered passes
(`fxpress.passes.registry.PASSES`), in orders their contracts (``requires`` / ``forbids`` /
``establishes`` / ``invalidates``) allow, with options drawn from each pass's documented range, over the
fast classics of the coverage zoo (tools/zoo/classic.py) and four of the pruning zoo's models
(tests/prune_zoo.py), four of them captured a second time with a dynamic batch. The properties, one test
function each:

- an order the contracts refuse is refused by the manager with `PipelineError` before any pass runs, and
  the message names the pass and the missing (or forbidden) property;
- every order the contracts allow runs, the graph is verified after every pass (the manager's own
  check, counted, so a bypass fails), and the result verifies, runs, has the eager output shapes and the
  properties the contracts predict;
- float-only pipelines (fold-bn, fold-constants, dce, observe, calibrate, annotate-sparsity: the passes
  whose docstrings promise exact numerics) keep the outputs within 1e-5 (relative) of eager;
- ``optimize`` changes neither the user's model (state dict bit for bit, training flags, requires_grad)
  nor the graph it was given (printed IR, tensors, properties, trace, example inputs), whatever runs;
- pipeline text round-trips: print -> parse gives equal passes and the same text (snake_case keys and
  spaces parse the same);
- an option outside its documented range, anywhere in pipeline text, is a `PipelineError` naming the pass
  before any pass runs;
- two seeded cases go through the TVM build (marked ``tvm``).

Every failure message starts with ``seed=N``: ``pytest "tests/test_fuzz_pipelines.py::<test>[N]"``
replays it (with the same ``FXPRESS_FUZZ_SEED`` / ``FXPRESS_FUZZ_SCALE``, if any, so N is among the ids).
The generator's oracle for the contracts (`simulate`) is written from the contract in
fxpress/passes/base.py, not taken from `check_order`, so the two are checked against each other. A pass
may still refuse options that do not fit a model (a block that does not divide a weight, more clusters than
weights: `DATA_REFUSALS`, each documented); such a case is skipped, and anything else fails. Case counts
are bounded so the file runs in about 85 s on two busy cores. Wider seed windows (about 4,000 cases more,
FXPRESS_FUZZ_SEED=1000..4000) found the later `KNOWN_BUGS`; with those steered around, the last two
windows (some 1,400 cases, dynamic batches included) found nothing further.

Known fxpress bugs the fuzzer found are in `KNOWN_BUGS`: each has a minimal ``xfail(strict=True)`` test
here and the generator steers around it (so the random tests keep finding new things); when the bug is
fixed the xfail turns into an error, and its entry, its steering and its xfail come out together. The
bugs found so far are fixed, each with a regression test in its pass's test file (fold-qdq on
fake-quant: test_fold_qdq; Python-only options printed: test_pipeline; prune-channels' stale sparsity,
qparams and hash sharing, and bf16 layers: test_prune_channels; sparsify on hash sharing: test_sparsify;
low-rank's stale observer slots: test_low_rank), so `KNOWN_BUGS` is empty and the generator covers
those combinations again.
"""

from __future__ import annotations

import copy
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import prune_zoo
import pytest
import torch
from torch import nn

import fxpress
from fxpress.errors import FxpressError, PassError, PipelineError, VerifyError
from fxpress.ir.graph import Graph, TraceRecord
from fxpress.passes import PASSES, Pass, parse_pipeline
from fxpress.passes.annotate_sparsity import AnnotateSparsity
from fxpress.passes.calibrate import Calibrate
from fxpress.passes.cast_bf16 import CastBf16
from fxpress.passes.dce import DeadCodeElimination
from fxpress.passes.distill import Distil
from fxpress.passes.fake_quantize import FakeQuantize
from fxpress.passes.fine_tune import FineTune
from fxpress.passes.fold_bn import FoldBatchNorm
from fxpress.passes.fold_constants import FoldConstants
from fxpress.passes.fold_qdq import FoldQDQ
from fxpress.passes.freeze_fake_quant import FreezeFakeQuant
from fxpress.passes.low_rank import LowRank
from fxpress.passes.manager import Instrument, PassManager
from fxpress.passes.observe import Observe
from fxpress.passes.pipeline import print_pipeline
from fxpress.passes.prune.prune_channels import PruneChannels
from fxpress.passes.qat import Qat
from fxpress.passes.qdq_rules import RULES
from fxpress.passes.share_weights import ShareWeights
from fxpress.passes.sparsify import Sparsify
from fxpress.quant.observers import OBSERVERS
from fxpress.train.loop import OPTIMIZERS, SCHEDULES
from tools.zoo.classic import ENTRIES

# bounded case counts (each a test id; the seed is the id). To explore further, move and widen the seed
# window: FXPRESS_FUZZ_SEED=1000 FXPRESS_FUZZ_SCALE=10 pytest tests/test_fuzz_pipelines.py (ids stay the seeds)
SEED_BASE = int(os.environ.get("FXPRESS_FUZZ_SEED", "0"))
SCALE = float(os.environ.get("FXPRESS_FUZZ_SCALE", "1"))


def seeds(cases: int) -> range:
    return range(SEED_BASE, SEED_BASE + max(1, round(cases * SCALE)))


REFUSED_CASES = 80
ALLOWED_CASES = 30
FLOAT_CASES = 30
UNCHANGED_CASES = 16
ROUND_TRIP_CASES = 150
OUT_OF_RANGE_CASES = 60

FLOAT_PASSES = ("fold-bn", "fold-constants", "dce", "observe", "calibrate", "annotate-sparsity")
TRAINERS = {"fine-tune", "distil", "qat"}


# --- the models -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """A model under fuzz: the user's eval model, its inputs, its captured graph and eager outputs."""

    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    graph: Graph
    eager: tuple[torch.Tensor, ...]
    classes: int  # outputs are (batch, classes) logits: trainers get integer targets
    dynamic: bool = False  # captured with a dynamic batch dimension: it also runs at batch 3


DYNAMIC = ("bn-mlp", "mobilenet-v1", "shufflenet", "vit")  # also captured with a dynamic batch


def grown(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The inputs at batch 3 (the first row again): what a dynamic-batch graph must also take."""
    return tuple(torch.cat([x, x[:1]]) for x in inputs)


def _flat(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


@cache
def subjects() -> tuple[Subject, ...]:
    """The fast classics and four pruning-zoo models, each built, captured and run once per process.

    The `DYNAMIC` ones come twice: captured at a static batch of 2 and with a dynamic batch dimension.
    """
    made: list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]] = []
    for entry in ENTRIES:
        if entry.fast:
            model, inputs = entry.build()
            made.append((entry.name, model, inputs))
    for name in ("resnet-basic", "shufflenet", "densenet", "vit"):
        model, x, _ = prune_zoo.build(name)
        made.append((name, copy.deepcopy(model), (x.clone(),)))  # our own copies: the cached ones stay pristine
    out = []
    for name, model, inputs in made:
        with torch.no_grad():
            eager = _flat(model(*inputs))
        assert len(eager) == 1 and eager[0].dim() == 2, name
        out.append(Subject(name, model, inputs, fxpress.capture(model, inputs), eager, eager[0].shape[1]))
        if name in DYNAMIC:
            dims = tuple({0: torch.export.Dim("batch")} for _ in inputs)
            graph = fxpress.capture(model, inputs, dynamic_shapes=dims)
            out.append(Subject(f"{name}+dyn", model, inputs, graph, eager, eager[0].shape[1], dynamic=True))
    return tuple(out)


# --- the contract oracle ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Where and why the contracts refuse a pipeline: the pass index, and the missing or forbidden properties."""

    index: int
    kind: str  # "requires" or "forbids"
    properties: tuple[str, ...]


def step(p: Pass | type[Pass], have: frozenset[str]) -> frozenset[str]:
    """The properties after `p` runs on a graph that has `have` (base.py: minus invalidates, plus establishes)."""
    return frozenset((set(have) - set(p.invalidates)) | set(p.establishes))


def refusal(cls: type[Pass], have: frozenset[str]) -> Refusal | None:
    """Why `cls` may not run on a graph with `have` (forbidden properties are checked first), else None."""
    present = tuple(sorted(str(f) for f in cls.forbids if f in have))
    if present:
        return Refusal(-1, "forbids", present)
    missing = tuple(sorted(str(r) for r in cls.requires if r not in have))
    return Refusal(-1, "requires", missing) if missing else None


def simulate(passes: Sequence[Pass], have: frozenset[str] = frozenset()) -> frozenset[str] | Refusal:
    """The final properties of a pipeline the contracts allow, or the first `Refusal`."""
    for i, p in enumerate(passes):
        why = refusal(type(p), have)
        if why is not None:
            return Refusal(i, why.kind, why.properties)
        have = step(p, have)
    return have


# --- known bugs: the generator steers around them; each has its own strict xfail (none open now) -------------


def _after(first: Callable[[Pass], bool], then: type[Pass]) -> Callable[[Sequence[Pass]], bool]:
    """Whether a `then` pass runs somewhere after a pass `first` accepts (the usual shape of a `KNOWN_BUGS` entry)."""

    def hits(passes: Sequence[Pass]) -> bool:
        seen = False
        for p in passes:
            if seen and isinstance(p, then):
                return True
            seen = seen or first(p)
        return False

    return hits


KNOWN_BUGS: dict[str, Callable[[Sequence[Pass]], bool]] = {}


def known_bug(passes: Sequence[Pass]) -> str | None:
    return next((name for name, hits in KNOWN_BUGS.items() if hits(passes)), None)


# --- the generator -----------------------------------------------------------------------------------------------


class Fuzzer:
    """Seeded pipelines and options for one subject. Every draw goes through `self.rng`."""

    def __init__(self, seed: int, subject: Subject) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.s = subject

    def coin(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def batches(self, n: int) -> list[tuple[torch.Tensor, ...]]:
        """`n` input tuples like the subject's: its own inputs first, then seeded noise of the same shapes."""
        gen = torch.Generator().manual_seed(self.seed)
        out = [self.s.inputs]
        for _ in range(n - 1):
            out.append(
                tuple(torch.randn(x.shape, generator=gen) if x.is_floating_point() else x for x in self.s.inputs)
            )
        return out

    def labelled(self, n: int) -> list[tuple[torch.Tensor, ...]]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        batch = self.s.inputs[0].shape[0]
        return [(*b, torch.randint(0, self.s.classes, (batch,), generator=gen)) for b in self.batches(n)]

    def make(self, name: str) -> Pass:
        """A `name` pass with options drawn from their documented ranges (Python-only options where needed)."""
        r = self.rng
        if name == "fold-bn":
            return FoldBatchNorm()
        if name == "fold-constants":
            return FoldConstants(max_growth=r.choice([1.0, 0.5, 2.0, 16.0]))
        if name == "dce":
            return DeadCodeElimination()
        if name == "observe":
            return self._observe()
        if name == "calibrate":
            return Calibrate(data=self.batches(r.randint(1, 3)), limit=r.choice([0, 0, 1, 2]))
        if name == "fold-qdq":
            return FoldQDQ(cleanup=tuple(rule for rule in RULES if self.coin(0.8)))
        if name == "prune-channels":
            importance = r.choice(["l1", "l2", "l1", "l2", "bn-scale", "taylor"])
            data = self.labelled(1) if importance == "taylor" else None
            return PruneChannels(
                ratio=r.choice([0.0, 0.125, 0.25, 0.5, 0.75]),
                per_layer=self.coin(0.7),
                round_to=r.choice([1, 1, 2, 4]),
                importance=importance,
                data=data,
            )
        if name == "sparsify":
            pattern = r.choice(["unstructured", "unstructured", "1x1", "2:4", "1:4"])
            density = None if ":" in pattern else r.choice([None, 0.1, 0.25, 0.5, 0.9, 1.0])
            return Sparsify(density=density, pattern=pattern, scope=r.choice(["per-layer", "global"]))
        if name == "annotate-sparsity":
            return AnnotateSparsity(tolerance=r.choice([0.0, 0.05, 0.2]), max_density=r.choice([0.5, 1.0, 0.25]))
        if name == "fine-tune":
            return FineTune(
                data=self.labelled(r.randint(1, 2)),
                epochs=1,
                lr=r.choice([1e-4, 1e-3, 1e-2]),
                optimizer=r.choice(OPTIMIZERS),
                schedule=r.choice(SCHEDULES),
            )
        if name == "distil":
            return Distil(
                teacher=r.choice([self.s.model, self.s.graph]),  # the user's model: it must come back untouched
                data=self.labelled(1),
                epochs=1,
                lr=r.choice([1e-4, 1e-3]),
                temperature=r.choice([1.0, 2.0, 4.0, 8.0]),
                alpha=r.choice([0.5, 0.9, 1.0]),  # 0 without hints is refused (documented: it teaches nothing)
                seed=r.randint(0, 100),
            )
        if name == "fake-quantize":
            return FakeQuantize(learn=self.coin())
        if name == "freeze-fake-quant":
            return FreezeFakeQuant()
        if name == "qat":
            return Qat(
                data=self.labelled(1), epochs=1, lr=r.choice([1e-5, 1e-4]), learn=self.coin(), seed=r.randint(0, 9)
            )
        if name == "share-weights":
            if self.coin(0.7):
                return ShareWeights(method="kmeans", bits=r.choice([None, 2, 3, 4, 6]))
            return ShareWeights(method="hash", ratio=r.choice([0.25, 0.5]), seed=r.randint(0, 9))
        if name == "low-rank":
            method = r.choice(["tucker2", "spatial", "svd"])
            if self.coin():
                return LowRank(method=method, ratio=r.choice([0.25, 0.5, 0.9]), rank_multiple=r.choice([1, 4, 16]))
            return LowRank(method=method, energy=r.choice([0.9, 0.99, 1.0]), rank_multiple=r.choice([1, 4, 16]))
        if name == "cast-bf16":
            return CastBf16()
        raise AssertionError(f"seed={self.seed}: no option generator for pass {name!r}; add one to Fuzzer.make")

    def _observe(self) -> Observe:
        r = self.rng
        for _ in range(50):  # a few combinations are refused by Observe itself (documented): draw again
            log = self.coin(0.15)
            bits = r.choice([2, 3, 4]) if log else r.choice([8, 8, 8, 7, 4, 2])
            weight_observer = r.choice(["auto", "auto", *sorted(OBSERVERS)])
            try:  # entropy and histogram weight observers are per-tensor only: per-channel draws again
                return Observe(
                    per_channel=self.coin(),
                    symmetric=self.coin(0.3),
                    dtype=r.choice(["int8", "uint8"]),
                    observer=r.choice(sorted(OBSERVERS)),
                    weight_observer=weight_observer,
                    power_of_two=self.coin(0.15),
                    reduce_range=self.coin(0.2),
                    weight_reduce_range=not log and bits == 8 and self.coin(0.3),
                    weight_scheme="log" if log else "uniform",
                    weight_bits=bits,
                    averaging_constant=r.choice([0.01, 0.1, 0.5]),
                    percentile=r.choice([99.0, 99.9, 99.99]),
                )
            except ValueError:
                continue
        raise AssertionError(f"seed={self.seed}: no valid observe options in 50 draws")

    def allowed(self, have: frozenset[str], names: Sequence[str]) -> list[str]:
        return [n for n in names if refusal(PASSES[n], have) is None]

    def pipeline(self, names: Sequence[str] = tuple(PASSES), length: tuple[int, int] = (1, 6)) -> list[Pass]:
        """A pipeline the contracts allow, drawn pass by pass from `names`, steering around `KNOWN_BUGS`."""
        for _ in range(100):
            have: frozenset[str] = frozenset()
            out: list[Pass] = []
            for _ in range(self.rng.randint(*length)):
                name = self.rng.choice(self.allowed(have, names))
                if name in TRAINERS and self.coin(0.5):  # trainers are the slow ones: half as often
                    name = self.rng.choice(self.allowed(have, names))
                out.append(self.make(name))
                have = step(out[-1], have)
            if known_bug(out) is None:
                return out
        raise AssertionError(f"seed={self.seed}: every drawn pipeline hits a known bug")

    def refused(self) -> tuple[list[Pass], list[Pass], Refusal]:
        """(a prefix to run first (maybe empty), a pipeline the contracts refuse after it, the expected refusal)."""
        prefix = self.pipeline(length=(0, 4))
        have = simulate(prefix)
        assert isinstance(have, frozenset)
        split = self.rng.randint(0, len(prefix)) if self.coin(0.25) else 0  # some of it in an earlier optimize
        earlier, body = prefix[:split], prefix[split:]
        bad = [n for n in PASSES if refusal(PASSES[n], have) is not None]
        violator = self.make(self.rng.choice(bad))
        suffix = self.pipeline(length=(0, 2)) if self.coin() else []
        pipeline = [*body, violator, *suffix]
        start = simulate(earlier)
        assert isinstance(start, frozenset)
        why = simulate(pipeline, start)
        assert isinstance(why, Refusal), f"seed={self.seed}: the generator's refused pipeline is allowed"
        return earlier, pipeline, why


def fuzzer(seed: int) -> Fuzzer:
    cases = subjects()
    return Fuzzer(seed, cases[seed % len(cases)])


# --- checks -----------------------------------------------------------------------------------------------------


def _say(seed: int, subject: Subject, passes: Sequence[Pass]) -> str:
    return f"seed={seed} model={subject.name} pipeline={', '.join(p.text() for p in passes)!r}"


@dataclass(frozen=True)
class Snapshot:
    """What `optimize` must not change: the user's model and the graph it was given."""

    model_state: dict[str, torch.Tensor]
    model_flags: tuple[tuple[str, bool], ...]
    grad_flags: tuple[tuple[str, bool], ...]
    graph_text: str
    graph_state: dict[str, torch.Tensor]
    graph_props: frozenset[str]
    graph_trace: tuple[TraceRecord, ...]
    inputs: tuple[torch.Tensor, ...]

    @classmethod
    def take(cls, model: nn.Module, graph: Graph) -> Snapshot:
        return cls(
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            tuple((n, m.training) for n, m in model.named_modules()),
            tuple((n, p.requires_grad) for n, p in model.named_parameters()),
            str(graph),
            {k: v.detach().clone() for k, v in graph.gm.state_dict().items()},
            graph.properties,
            tuple(graph.trace),
            tuple(x.clone() for x in graph.example_inputs),
        )

    def differences(self, model: nn.Module, graph: Graph) -> list[str]:
        now = Snapshot.take(model, graph)
        diffs = []
        if now.model_state.keys() != self.model_state.keys():
            diffs.append("the model's state dict keys changed")
        diffs += [
            f"model tensor {k} changed"
            for k in self.model_state
            if not _same(self.model_state[k], now.model_state.get(k))
        ]
        if now.model_flags != self.model_flags:
            diffs.append("a module's training flag changed")
        if now.grad_flags != self.grad_flags:
            diffs.append("a parameter's requires_grad changed")
        if now.graph_text != self.graph_text:
            diffs.append("the input graph's printed IR changed")
        if now.graph_state.keys() != self.graph_state.keys():
            diffs.append("the input graph's tensors changed (keys)")
        diffs += [
            f"graph tensor {k} changed"
            for k in self.graph_state
            if not _same(self.graph_state[k], now.graph_state.get(k))
        ]
        if now.graph_props != self.graph_props or now.graph_trace != self.graph_trace:
            diffs.append("the input graph's properties or trace changed")
        if not all(_same(a, b) for a, b in zip(self.inputs, now.inputs, strict=True)):
            diffs.append("the graph's example inputs changed")
        return diffs


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8) if t.is_floating_point() else t


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Bit for bit: dtype, shape and every byte (so -0.0 differs from 0.0 and a NaN equals itself)."""
    return b is not None and a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


class Recorder(Instrument):
    """Records what the manager does: the passes it starts and the graph objects it hands out after each."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def before_pass(self, p: Pass, graph: Graph) -> None:
        self.events.append(f"before {p.name}")

    def after_pass(self, p: Pass, graph: Graph, record: TraceRecord) -> None:
        self.events.append(f"after {p.name}")


@contextmanager
def counting_verify(events: list[str]) -> Iterator[None]:
    """Log every `Graph.verify` call into `events` (the manager's check after each pass shows up between passes)."""
    original = Graph.verify

    def verify(self: Graph) -> None:
        events.append("verify")
        original(self)

    Graph.verify = verify  # type: ignore[method-assign]
    try:
        yield
    finally:
        Graph.verify = original  # type: ignore[method-assign]


def crashed(exc: BaseException) -> bool:
    """An exception fxpress did not raise on purpose (the manager wraps those in a PassError with the cause)."""
    if isinstance(exc, VerifyError) or not isinstance(exc, FxpressError):
        return True
    return isinstance(exc, PassError) and exc.__cause__ is not None and not isinstance(exc.__cause__, FxpressError)


# documented refusals a pass may give at run time for options that do not fit a model (not order errors)
DATA_REFUSALS = re.compile(
    r"does not divide|matches no|clusters for \d+ surviving|would remove every channel|needs a batch-norm scale"
)


def _run_or_skip(say: str, graph: Graph, pipeline: Sequence[Pass], **kwargs: Any) -> Graph:
    """`optimize`, skipping the case on a documented refusal of options that do not fit this model."""
    try:
        return fxpress.optimize(graph, pipeline, **kwargs)
    except PipelineError as exc:
        raise AssertionError(f"{say}: the contracts allow this order but the manager refused it: {exc}") from exc
    except FxpressError as exc:
        if crashed(exc) or not DATA_REFUSALS.search(str(exc)):
            raise AssertionError(f"{say}: {type(exc).__name__}: {exc}") from exc
        pytest.skip(f"{say}: a documented refusal of options that do not fit this model: {exc}")


# --- the properties -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", seeds(REFUSED_CASES))
def test_refused_orders_are_refused_before_anything_runs(seed: int) -> None:
    f = fuzzer(seed)
    earlier, pipeline, why = f.refused()
    say = _say(seed, f.s, [*earlier, *pipeline])
    graph = _run_or_skip(say, f.s.graph, earlier) if earlier else f.s.graph
    snap = Snapshot.take(f.s.model, graph)
    rec = Recorder()
    with pytest.raises(PipelineError) as info:
        fxpress.optimize(graph, pipeline, instruments=[rec])
    assert rec.events == [], f"{say}: passes ran before the refusal: {rec.events}"
    msg = str(info.value)
    name = pipeline[why.index].name
    head = f"{name} requires" if why.kind == "requires" else f"{name} cannot run on a graph that is"
    assert head in msg, f"{say}: expected {head!r} (pass {why.index}), got: {msg}"
    for prop in why.properties:
        assert repr(prop) in msg, f"{say}: the refusal does not name {prop!r}: {msg}"
    assert not (diffs := snap.differences(f.s.model, graph)), f"{say}: {diffs}"


@pytest.mark.parametrize("seed", seeds(ALLOWED_CASES))
def test_allowed_orders_run_and_verify_after_every_pass(seed: int) -> None:
    f = fuzzer(seed)
    pipeline = f.pipeline()
    say = _say(seed, f.s, pipeline)
    expected = simulate(pipeline)
    assert isinstance(expected, frozenset), f"{say}: the generator drew a refused pipeline: {expected}"
    events: list[str] = []
    rec = Recorder()
    rec.events = events
    with counting_verify(events):
        out = _run_or_skip(say, f.s.graph, pipeline, instruments=[rec])
    # the manager's verification sits between each pass and the next (and after the last)
    starts = [i for i, e in enumerate(events) if e.startswith("before")]
    assert len(starts) == len(pipeline), f"{say}: {events}"
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(events)
        window = events[start:end]
        assert "verify" in window[1:], f"{say}: no verify after pass {i} ({pipeline[i].name}): {window}"
        assert window[-1] == f"after {pipeline[i].name}", f"{say}: {window}"
    out.verify()
    assert out.properties == expected, f"{say}: properties {sorted(out.properties)} != contracts {sorted(expected)}"
    assert [r.pipeline for r in out.trace] == [p.text() for p in pipeline], f"{say}: trace {out.trace}"
    with torch.no_grad():
        got = _flat(out(*f.s.inputs))
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in f.s.eager], f"{say}: output shapes changed"
    assert all(bool(torch.isfinite(t).all()) for t in got), f"{say}: non-finite outputs"
    if f.s.dynamic:
        with torch.no_grad():
            three = _flat(out(*grown(f.s.inputs)))
        assert all(t.shape[0] == 3 for t in three), f"{say}: batch 3 gave {[tuple(t.shape) for t in three]}"


@pytest.mark.parametrize("seed", seeds(FLOAT_CASES))
def test_float_pipelines_keep_numerics(seed: int) -> None:
    f = fuzzer(seed)
    pipeline = f.pipeline(FLOAT_PASSES, length=(1, 7))
    say = _say(seed, f.s, pipeline)
    out = _run_or_skip(say, f.s.graph, pipeline)
    with torch.no_grad():
        got = _flat(out(*f.s.inputs))
    pairs = list(zip(got, f.s.eager, strict=True))
    if f.s.dynamic:
        with torch.no_grad():
            pairs += zip(_flat(out(*grown(f.s.inputs))), _flat(f.s.model(*grown(f.s.inputs))), strict=True)
    for g, e in pairs:
        rel = float((g - e).abs().max() / e.abs().max().clamp_min(1e-12))
        assert rel <= 1e-5, f"{say}: {rel:.2e} relative to eager (limit 1e-5; batch {g.shape[0]})"


@pytest.mark.parametrize("seed", seeds(UNCHANGED_CASES))
def test_optimize_leaves_the_model_and_its_graph_alone(seed: int) -> None:
    f = fuzzer(seed)
    pipeline = f.pipeline(length=(2, 6))
    if f.coin(0.5):  # the user's model as a teacher, wherever the contracts let distil run
        teach = Distil(teacher=f.s.model, data=f.labelled(1), lr=1e-3)
        spots = [i for i in range(len(pipeline) + 1) if isinstance(simulate([*pipeline[:i], teach]), frozenset)]
        if spots:
            pipeline.insert(f.rng.choice(spots), teach)
    say = _say(seed, f.s, pipeline)
    f.s.model.eval()
    snap = Snapshot.take(f.s.model, f.s.graph)
    try:
        fxpress.optimize(f.s.graph, pipeline)
    except FxpressError as exc:
        assert not crashed(exc), f"{say}: {type(exc).__name__}: {exc}"
    assert not (diffs := snap.differences(f.s.model, f.s.graph)), f"{say}: {diffs}"
    with torch.no_grad():
        again = _flat(f.s.model(*f.s.inputs))
    assert all(_same(a, b) for a, b in zip(again, f.s.eager, strict=True)), f"{say}: the model computes differently"


def _spell(f: Fuzzer, text: str) -> str:
    """The same pipeline text spelled differently: snake_case keys, spaces around separators."""
    if f.coin():
        text = re.sub(r"([{,])([a-z]+(?:-[a-z]+)+)=", lambda m: m.group(1) + m.group(2).replace("-", "_") + "=", text)
    if f.coin():
        text = text.replace(",", " , ").replace("{", " { ").replace("}", " } ").replace("=", " = ")
    return text


def _text_only(p: Pass) -> Pass:
    """`p` without its Python-only options (data, teacher, loss): what pipeline text can carry.

    A pass whose options need such data (``prune-channels{importance=taylor}``) prints text that is refused,
    as documented: it becomes the bare pass.
    """
    try:
        return parse_pipeline(p.text())[0]
    except PipelineError as exc:
        assert "cannot carry" in str(exc), f"{p.text()!r} does not parse: {exc}"
        return type(p)()


@pytest.mark.parametrize("seed", seeds(ROUND_TRIP_CASES))
def test_pipeline_text_round_trips(seed: int) -> None:
    f = fuzzer(seed)
    pipeline = [_text_only(p) for p in f.pipeline(length=(1, 8))]
    text = print_pipeline(pipeline)
    say = f"seed={seed} text={text!r}"
    parsed = parse_pipeline(text)
    assert parsed == pipeline, f"{say}: parsed back to {parsed}"
    assert print_pipeline(parsed) == text, f"{say}: printed again as {print_pipeline(parsed)!r}"
    assert ",".join(p.text() for p in pipeline) == text, f"{say}: print_pipeline disagrees with Pass.text"
    respelt = _spell(f, text)
    assert parse_pipeline(respelt) == pipeline, f"seed={seed} text={respelt!r}: parses to other passes"
    manager_text = PassManager(pipeline).pipeline
    assert manager_text == text, f"{say}: PassManager.pipeline gives {manager_text!r}"


OUT_OF_RANGE: dict[str, tuple[str, ...]] = {  # option values outside each pass's documented range
    "fold-constants": ("max-growth=0", "max-growth=-1"),
    "observe": (
        "weight-bits=1",
        "weight-bits=9",
        "dtype=int4",
        "observer=foo",
        "weight-observer=foo",
        "skip=[(]",
        "weight-observer=percentile,percentile=101",
        "percentile=50",
    ),
    "calibrate": ("limit=-1",),
    "fold-qdq": ("cleanup=[foo]",),
    "prune-channels": ("ratio=1.5", "ratio=-0.1", "round-to=0", "importance=foo"),
    "sparsify": ("density=0", "density=1.5", "pattern=5:4", "scope=foo"),
    "annotate-sparsity": ("tolerance=-1", "max-density=0", "max-density=2"),
    "fine-tune": ("epochs=0", "lr=0", "optimizer=foo", "schedule=foo"),
    "distil": ("epochs=0", "temperature=0", "alpha=2", "lr=0"),
    "fake-quantize": ("learn=2",),
    "qat": ("epochs=0", "lr=0", "qparams-lr=-1", "optimizer=foo"),
    "share-weights": ("bits=0", "bits=9", "clusters=1", "method=foo", "method=hash,ratio=2"),
    "low-rank": ("ratio=0", "ratio=1", "energy=0", "energy=1.5", "rank-multiple=0", "method=foo"),
    "cast-bf16": ("layers=[(]",),
}


@pytest.mark.parametrize("seed", seeds(OUT_OF_RANGE_CASES))
def test_out_of_range_options_are_refused_before_anything_runs(seed: int) -> None:
    f = fuzzer(seed)
    name = f.rng.choice(sorted(OUT_OF_RANGE))
    bad = f"{name}{{{f.rng.choice(OUT_OF_RANGE[name])}}}"
    good = [p.text() for p in (_text_only(p) for p in f.pipeline(length=(0, 4)))]
    good.insert(f.rng.randint(0, len(good)), bad)
    text = ",".join(good)
    rec = Recorder()
    with pytest.raises(PipelineError) as info:
        fxpress.optimize(f.s.graph, text, instruments=[rec])
    assert rec.events == [], f"seed={seed} text={text!r}: passes ran before the refusal: {rec.events}"
    assert name in str(info.value), f"seed={seed} text={text!r}: the refusal does not name {name}: {info.value}"


# --- through TVM: two seeded cases ------------------------------------------------------------------------------


@pytest.mark.tvm
@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_pipelines_compile(seed: int) -> None:
    """Seed 0: a float pipeline on bn-mlp; seed 1: float passes and sparsify, then a random int8 on lenet5."""
    f = Fuzzer(seed, next(s for s in subjects() if s.name == ("bn-mlp" if seed == 0 else "lenet5")))
    if seed == 0:
        pipeline = f.pipeline(FLOAT_PASSES, length=(2, 5))
    else:
        pipeline = [*f.pipeline(("fold-bn", "dce", "sparsify"), length=(1, 3)), f.make("observe")]
        pipeline += [f.make("calibrate"), f.make("fold-qdq")]
    say = _say(seed, f.s, pipeline)
    out = fxpress.optimize(f.s.graph, pipeline)
    module = fxpress.compile(out, target="x86", num_threads=1)
    with torch.no_grad():
        want = _flat(out(*f.s.inputs))
    got = _flat(module(*f.s.inputs))
    for g, w in zip(got, want, strict=True):
        rel = float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
        assert rel <= 1e-4, f"{say}: compiled differs from the graph by {rel:.2e} relative"
