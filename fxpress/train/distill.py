"""`distil`: train a copy of a student graph against a teacher's outputs and features (knowledge distillation).

    small = distil(student, teacher, batches, epochs=5, lr=1e-3)                    # soft labels (Hinton)
    small = distil(student, teacher, batches, epochs=5, lr=1e-3, alpha=0.0,
                   hints=[("%5", "%7")])                                             # a FitNet hint
    small = distil(student, teacher, batches, epochs=5, lr=1e-3, alpha=0.0,
                   attention=[("%2", "%2"), ("%5", "%7")])                          # attention transfer
    tuned = distil(pruned, dense, batches, epochs=5, lr=1e-3)                       # prune, then recover

The loss of a batch ``(inputs..., y)``, with ``s`` the student, ``t`` the
teacher and T the temperature (the losses are `fxpress.train.distill_losses`)::

      (1 - alpha) * loss(s(x), y)                                  hard labels (cross-entropy by default)
    + alpha * T^2 * KL(softmax(t(x)/T) || softmax(s(x)/T))        soft labels
    + hint_weight * sum_i mean((adapter_i(s_i) - t_i)^2)           FitNet hints, one learned adapter each
    + attention_weight / 2 * sum_j AT(s_j, t_j)                   attention transfer (beta / 2, beta = 1000)

where ``s_i``/``t_i`` are the values of the tapped nodes of a pair. A pair of
conv features ``[N, C, H, W]`` in `attention` is compared through their
normalised spatial attention maps; a pair of softmax outputs (a transformer's
attention probabilities ``[N, H, Lq, Lk]``) through the KL divergence of each
query's row. Transformer hidden states ``[N, L, D]`` pair as hints (a linear
adapter on D).

**The teacher** is an fxpress `Graph` or an ``nn.Module``; a module is captured
(`fxpress.ir.capture.capture`, on a copy, in eval mode) with the student's
example inputs and dynamic shapes, so that its taps are node names too. It
runs under ``no_grad`` and is never changed; nor is the student given: the
result is a new `Graph`, trained on a private copy. Adapters are created for
the run and dropped after it.

**Checked before training** (each a `PassError` naming what to fix): the
options (temperature > 0, 0 <= alpha <= 1, epochs >= 1, lr > 0, weights >= 0,
and something for the teacher to teach: alpha > 0, a hint or an attention
pair); that the teacher takes as many inputs as the student; every tap name
in both graphs (an unknown one lists the nearest names, see
`fxpress.train.taps`) and that each pair can be compared (ranks, kinds).
Checked on every batch before its step, when alpha > 0: that both outputs
are one tensor of the same shape (soft labels compare them class by class).

**The loop** is `fine_tune`'s (`fxpress.train.loop`): the zeros of weights
annotated `Sparsity` stay zero (gradients and optimizer state masked), a
progress bar on a terminal, a graph captured in eval mode keeps batch norm on
its running statistics. ``seed`` seeds the adapters' initialization and every
draw from torch's global generator inside the run (a DataLoader's shuffle),
without disturbing the caller's generator: the same seed, data and options
give the same graph. ``history`` receives one dict per epoch: the mean total
``loss`` and the mean of each unweighted part (``hard``, ``soft``, ``hint``,
``attention``, those in use); each epoch is also logged (INFO).

The new graph loses ``observed`` and ``calibrated`` (weights moved) and gains
``distilled``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fxpress.errors import CaptureError, InputError, PassError
from fxpress.ir.capture import capture
from fxpress.ir.graph import Graph
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.train.distill_losses import (
    attention_loss,
    attention_probability_loss,
    hint_loss,
    make_adapter,
    soft_label_loss,
)
from fxpress.train.loop import OptimizerFactory, check_training, masked_training, seeded
from fxpress.train.taps import Tap, TapReader, resolve_taps

log = logging.getLogger(__name__)

Loss = Callable[[Any, torch.Tensor], torch.Tensor]
Pair = tuple[str, str]
INVALIDATES = WEIGHT_DEPENDENT  # weights moved: observe and calibrate again
SOFTMAX_OPS = ("aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default")
WHAT = "distil"


def distil(
    student: Graph,
    teacher: Graph | nn.Module,
    data: Iterable[Sequence[torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    temperature: float = 4.0,
    alpha: float = 0.9,
    hints: Sequence[Pair] = (),
    hint_weight: float = 1.0,
    attention: Sequence[Pair] = (),
    attention_weight: float = 1000.0,
    loss: Loss = F.cross_entropy,
    optimizer: str | OptimizerFactory = "adam",
    schedule: str = "constant",
    weight_decay: float = 0.0,
    seed: int | None = 0,
    progress: bool = True,
    history: list[dict[str, float]] | None = None,
) -> Graph:
    """Train a copy of `student` on `data` against `teacher` (see the module docstring); the new graph."""
    check_training(WHAT, data, epochs, lr, optimizer, schedule)
    hints, attention = _pairs("hints", hints), _pairs("attention", attention)
    _check_options(temperature, alpha, hint_weight, attention_weight, hints, attention, seed)
    teacher_graph = _teacher_graph(teacher, student)
    new = student.copy()
    total = len(data) * epochs if isinstance(data, Sized) else None
    with seeded(seed):
        objective = Distillation(
            new, teacher_graph, temperature, alpha, hints, hint_weight, attention, attention_weight, loss
        )
        kwargs: dict[str, Any] = {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "total": total}
        extra = list(objective.adapters.parameters())
        with masked_training(new, what=WHAT, progress=progress, extra=extra, **kwargs) as run:
            for epoch in range(epochs):
                means = run.epoch(data, objective, epoch, epochs, schedule)
                parts = ", ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
                log.info("distil epoch %d/%d: loss %.4f (%s)", epoch + 1, epochs, means["loss"], parts)
                if history is not None:
                    history.append(means)
    new.properties = (new.properties - INVALIDATES) | {Property.DISTILLED}
    return new


@dataclass(frozen=True)
class _Pair:
    kind: str  # "hint", "attention-map", "attention-probability"
    student: Tap
    teacher: Tap


class Distillation:
    """The objective of one batch (the loop's `Objective`): its loss and parts, and the adapters it trains.

    Built on the private copy being trained; resolves and checks every tap and
    makes the hint adapters at construction, before any training. Usable by
    other trainers (a QAT loop with a float teacher) as their objective.
    """

    def __init__(
        self,
        student: Graph,
        teacher: Graph,
        temperature: float,
        alpha: float,
        hints: Sequence[Pair],
        hint_weight: float,
        attention: Sequence[Pair],
        attention_weight: float,
        loss: Loss = F.cross_entropy,
    ) -> None:
        self.student, self.teacher = student, teacher
        self.temperature, self.alpha, self.loss = temperature, alpha, loss
        self.hint_weight, self.attention_weight = hint_weight, attention_weight
        pairs = [("hint", p) for p in hints] + [("attention", p) for p in attention]
        s_taps = resolve_taps(student, [s for _, (s, _) in pairs], role="student", what=WHAT)
        t_taps = resolve_taps(teacher, [t for _, (_, t) in pairs], role="teacher", what=WHAT)
        self.pairs = [_pair(kind, s, t) for (kind, _), s, t in zip(pairs, s_taps, t_taps, strict=True)]
        self.adapters = nn.ModuleList([_adapter(p) for p in self.pairs if p.kind == "hint"])  # under the run's seed
        self._student_reader = TapReader(student, s_taps) if pairs else None
        self._teacher_reader = TapReader(teacher, t_taps) if pairs else None

    def __call__(
        self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        s_out, s_feats = _run(self.student, self._student_reader, inputs, index, "student")
        with torch.no_grad():
            t_out, t_feats = _run(self.teacher, self._teacher_reader, inputs, index, "teacher")
        hard = self.loss(s_out, target)
        total = (1.0 - self.alpha) * hard
        parts = {"hard": float(hard.detach())}
        if self.alpha > 0:
            _check_outputs(s_out, t_out, index)
            soft = soft_label_loss(s_out, t_out, self.temperature)
            total = total + self.alpha * soft
            parts["soft"] = float(soft.detach())
        adapters = iter(self.adapters)
        sums: dict[str, torch.Tensor] = {}
        for pair, s, t in zip(self.pairs, s_feats, t_feats, strict=True):
            if pair.kind == "hint":
                term = hint_loss(next(adapters)(s), t)
            elif pair.kind == "attention-map":
                term = attention_loss(s, t)
            else:
                term = attention_probability_loss(s, t)
            key = "hint" if pair.kind == "hint" else "attention"
            sums[key] = sums[key] + term if key in sums else term
        if "hint" in sums:
            total = total + self.hint_weight * sums["hint"]
        if "attention" in sums:
            total = total + self.attention_weight / 2 * sums["attention"]
        parts |= {k: float(v.detach()) for k, v in sums.items()}
        return total, parts


def _pairs(option: str, pairs: Any) -> list[Pair]:
    if isinstance(pairs, str) or not isinstance(pairs, Iterable):
        raise PassError(f"{WHAT}: {option} must be a list of (student node, teacher node) pairs, got {pairs!r}")
    out = []
    for pair in pairs:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise PassError(
                f"{WHAT}: {option} must be a list of (student node, teacher node) pairs such as [('%5', '%7')], "
                f"got the item {pair!r}"
            )
        if not all(isinstance(n, str) and n for n in pair):
            raise PassError(f"{WHAT}: {option}: name the nodes of {pair!r} as text, as print(graph) shows them")
        out.append((pair[0].strip(), pair[1].strip()))
    return out


def _check_options(
    temperature: float,
    alpha: float,
    hint_weight: float,
    attention_weight: float,
    hints: list[Pair],
    attention: list[Pair],
    seed: int | None,
) -> None:
    if not _real(temperature) or not temperature > 0:
        raise PassError(
            f"{WHAT}: temperature must be > 0 (4 is common; above 1 softens the teacher's labels), got {temperature!r}"
        )
    if not _real(alpha) or not 0.0 <= alpha <= 1.0:
        raise PassError(f"{WHAT}: alpha (the weight of the soft labels) must be in [0, 1], got {alpha!r}")
    for name, weight in (("hint_weight", hint_weight), ("attention_weight", attention_weight)):
        if not _real(weight) or weight < 0:
            raise PassError(f"{WHAT}: {name} must be a finite number >= 0, got {weight!r}")
    if alpha == 0 and not hints and not attention:
        raise PassError(
            f"{WHAT}: with alpha=0 and no hints or attention pairs the teacher teaches nothing; raise alpha, "
            "add hints=[(student node, teacher node)] or attention=[...], or train with fine_tune"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise PassError(f"{WHAT}: seed must be an integer or None, got {seed!r}")


def _real(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _teacher_graph(teacher: Graph | nn.Module, student: Graph) -> Graph:
    if isinstance(teacher, Graph):
        graph = teacher
    elif isinstance(teacher, nn.Module):
        shapes = student.dynamic_shapes
        if isinstance(shapes, dict):  # keyed by the student's argument names: give them by position
            shapes = tuple(shapes.values())
        try:
            graph = capture(teacher, student.example_inputs, dynamic_shapes=shapes)
        except CaptureError as exc:
            exc.notes.append(f"({WHAT}: while capturing the teacher with the student's example inputs)")
            raise
    else:
        raise PassError(
            f"{WHAT}: the teacher must be an fxpress Graph or a torch nn.Module, got {type(teacher).__name__}"
        )
    if len(graph.input_names) != len(student.input_names):
        raise PassError(
            f"{WHAT}: the teacher takes {len(graph.input_names)} inputs ({', '.join(graph.input_names)}) but the "
            f"student {len(student.input_names)} ({', '.join(student.input_names)}); both run on the same data"
        )
    return graph


def _pair(kind: str, s: Tap, t: Tap) -> _Pair:
    """The pair with its comparison (hint, attention map or attention probabilities), checked to be comparable."""
    where = f"{WHAT}: {kind} pair ({s.name!r}, {t.name!r})"
    if kind == "hint":
        try:
            make_adapter(_static(s, where), _static(t, where))
        except ValueError as exc:
            raise PassError(f"{where}: {exc}", notes=[f"  student: {s.line}", f"  teacher: {t.line}"]) from exc
        return _Pair("hint", s, t)
    probabilities = [_is_softmax(tap) for tap in (s, t)]
    if all(probabilities):
        return _Pair("attention-probability", s, t)
    if not any(probabilities) and len(s.shape) == len(t.shape) == 4:
        return _Pair("attention-map", s, t)
    raise PassError(
        f"{where}: attention pairs two conv features [N, C, H, W] or two softmax outputs (attention "
        f"probabilities), got {_describe(s)} and {_describe(t)}; pair hidden states as hints",
        notes=[f"  student: {s.line}", f"  teacher: {t.line}"],
    )


def _adapter(pair: _Pair) -> nn.Module:
    return make_adapter(_static(pair.student, ""), _static(pair.teacher, ""))


def _static(tap: Tap, where: str) -> tuple[int, ...]:
    """The tap's shape with the batch as 0; `PassError` when a size past the batch is symbolic."""
    shape = tap.shape
    if any(not isinstance(d, int) for d in shape[1:]):
        raise PassError(f"{where}: a hint adapter needs static sizes past the batch, but {tap.name!r} is {tap.line}")
    return (0, *(int(d) for d in shape[1:]))


def _is_softmax(tap: Tap) -> bool:
    return str(tap.node.target) in SOFTMAX_OPS


def _describe(tap: Tap) -> str:
    op = "softmax" if _is_softmax(tap) else str(tap.node.target).removesuffix(".default")
    return f"{op} {tap.line.rpartition(' : ')[2]}"


def _run(
    graph: Graph, reader: TapReader | None, inputs: tuple[torch.Tensor, ...], index: int, role: str
) -> tuple[Any, list[torch.Tensor]]:
    try:
        return reader.run_taps(*inputs) if reader is not None else (graph.gm(*inputs), [])
    except RuntimeError as exc:
        raise InputError(
            f"{WHAT}: the {role} failed on data[{index}] ({exc}); inputs must have the captured dtypes and "
            "static sizes (capture with dynamic_shapes for a variable batch)"
        ) from exc


def _check_outputs(s_out: Any, t_out: Any, index: int) -> None:
    for role, out in (("student", s_out), ("teacher", t_out)):
        if not isinstance(out, torch.Tensor):
            raise PassError(
                f"{WHAT}: the {role}'s output is a {type(out).__name__}, not one tensor of logits; distil compares "
                "one output (wrap the model to return its logits)"
            )
    if s_out.shape != t_out.shape:
        raise PassError(
            f"{WHAT}: the teacher's output {list(t_out.shape)} and the student's {list(s_out.shape)} differ in shape "
            f"(on data[{index}]); soft labels compare them class by class: give a teacher with the student's outputs"
        )
