"""distil: train the graph's parameters against a teacher's outputs and features (knowledge distillation).

    %fc.weight = param f32[10,64]
      -> %fc.weight = param f32[10,64]      (new values; same graph, same zeros; adapters dropped)

A thin pass over `fxpress.train.distil`: ``epochs`` passes over ``data``
minimizing ``(1 - alpha) * cross-entropy + alpha * T^2 * KL(teacher || student
at temperature T)`` (Hinton et al.), plus ``hint-weight`` times a FitNet hint
per ``hints`` pair (the student node's value through a learned 1x1 conv or
linear adapter, regressed onto the teacher node's) and ``attention-weight / 2``
times an attention-transfer loss per ``attention`` pair (normalised spatial
attention maps of conv features, or KL of softmax attention probabilities).
Pairs are written ``student:teacher`` with node names as ``print(graph)``
shows them: ``distil{alpha=0,hints=[%5:%7]}``; in Python also as tuples,
``Distil(hints=[("%5", "%7")], ...)``. ``optimizer`` (adam, adamw, sgd),
``lr``, ``schedule`` (constant, cosine) and ``seed`` are as in
``fine-tune``; the same masked loop keeps the zeros of weights annotated
`Sparsity`.

`teacher` (an fxpress Graph or an nn.Module, captured with the graph's example
inputs) and `data` (an iterable of ``(inputs..., target)`` tuples, iterable
once per epoch) are Python-only, like fine-tune's data:
``Distil(teacher=dense, data=batches, epochs=3)``. The text form prints and
parses the other options; a run without them says how to give them.

Requires: nothing. Establishes: ``distilled``; invalidates ``observed`` and
``calibrated`` (weights move: observe and calibrate afterwards). Numerics:
changes the function (that is the point); deterministic for the same data,
teacher and options (``seed`` seeds the adapters and the run's random draws).
Bad input, each a clear error before training: no teacher or data, a
temperature <= 0, alpha outside [0, 1], epochs < 1, lr <= 0, a tap name not
in its graph (the message lists the near names), a tap on a non-tensor value,
a pair that cannot be compared; on the first batch, before any step, student
and teacher outputs of different shapes.
Leaves alone: the teacher, the graph's structure, the zeros of annotated
weights, buffers (batch-norm running statistics) and integer parameters.
Sits where ``fine-tune`` does: after ``prune-channels`` / ``sparsify`` (with
the unpruned graph as the teacher, to recover accuracy), before quantization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from fxpress.errors import PassError
from fxpress.ir.graph import Graph
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult, print_pass
from fxpress.passes.training import check_training_fields
from fxpress.train.distill import distil
from fxpress.train.loop import HOW

_HOW = f"give them in Python: fxpress.passes.Distil(teacher=model, data=[(x, y), ...], epochs=3); {HOW}"


@dataclass(frozen=True)
class Distil(Pass):
    """Train the parameters against a teacher (see the module docstring)."""

    name = "distil"
    establishes = frozenset({Property.DISTILLED})
    invalidates = WEIGHT_DEPENDENT
    forbids = frozenset({Property.QUANTIZED})

    teacher: Any = field(default=None, compare=False, repr=False)
    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)
    epochs: int = 1
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.9
    hints: tuple[str, ...] = ()
    hint_weight: float = 1.0
    attention: tuple[str, ...] = ()
    attention_weight: float = 1000.0
    optimizer: str = "adam"
    schedule: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.data, str | bytes) or isinstance(self.teacher, str | bytes):
            raise ValueError(f"the teacher and the training data cannot be given as text; {_HOW}")
        check_training_fields(self, _HOW)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (the weight of the soft labels) must be in [0, 1], got {self.alpha}")
        for option in ("hints", "attention"):  # ("%5", "%7") pairs become their text form "%5:%7"
            object.__setattr__(self, option, tuple(_pair_text(option, p) for p in getattr(self, option)))

    def text(self) -> str:
        return print_pass(dataclasses.replace(self, teacher=None, data=None))  # Python-only options

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        if self.teacher is None or self.data is None:
            missing = [what for what, v in (("a teacher", self.teacher), ("training data", self.data)) if v is None]
            raise PassError(f"distil needs {' and '.join(missing)}, and pipeline text cannot carry them; {_HOW}")
        losses: list[dict[str, float]] = []
        tuned = distil(
            graph,
            self.teacher,
            self.data,
            epochs=self.epochs,
            lr=self.lr,
            temperature=self.temperature,
            alpha=self.alpha,
            hints=[_split(p) for p in self.hints],
            hint_weight=self.hint_weight,
            attention=[_split(p) for p in self.attention],
            attention_weight=self.attention_weight,
            optimizer=self.optimizer,
            schedule=self.schedule,
            seed=self.seed,
            progress=True,
            history=losses,
        )
        before, after = graph.params(), tuned.params()
        modified = any(not torch.equal(before[k], after[k]) for k in before)
        stats = {
            "epochs": self.epochs,
            "loss_first": round(losses[0]["loss"], 6),
            "loss_last": round(losses[-1]["loss"], 6),
        }
        return PassResult(tuned, modified=modified, stats=stats)


def _pair_text(option: str, pair: Any) -> str:
    """``("%5", "%7")`` or ``"%5:%7"`` -> ``"%5:%7"``; `ValueError` for anything else."""
    names = pair.split(":") if isinstance(pair, str) else pair
    if not isinstance(names, tuple | list) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{option} are student:teacher node pairs such as %5:%7, got {pair!r}")
    student, teacher = (n.strip() for n in names)
    if not student or not teacher:
        raise ValueError(f"{option} are student:teacher node pairs such as %5:%7, got {pair!r}")
    return f"{student}:{teacher}"


def _split(pair: str) -> tuple[str, str]:
    student, teacher = pair.split(":")
    return student.strip(), teacher.strip()
