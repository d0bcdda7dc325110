"""The masked training loop that `fine_tune`, `distil` and `qat` share: one epoch at a time, zeros held, shared weights tied.

    with masked_training(new, what="distil", optimizer="adam", lr=1e-3, weight_decay=0.0,
                         extra=adapters, total=len(data) * epochs, progress=True) as run:
        for epoch in range(epochs):
            means = run.epoch(data, objective, epoch, epochs, "cosine")   # {"loss": ..., parts...}

A trainer supplies an *objective*, ``objective(inputs, target, index) ->
(loss, parts)``: the scalar loss of one batch and, for the log, the float
value of each part it is made of (``{}`` when it has none). The loop does the
rest, the same for every trainer: it makes the float parameters of the private
copy it is given trainable (and freezes them again afterwards, also on an
error), builds the optimizer over them plus any ``extra`` parameters (a
distillation adapter), sets each epoch's learning rate (`schedule_lr`), and
after every step puts the zeros of every weight annotated `Sparsity` back:
their gradients are masked before the step, the masks applied again after it,
and the optimizer's state (Adam's moments, SGD's momentum) cleared wherever a
mask is (re)applied through `apply_masks`, so momentum cannot resurrect a
pruned weight. On success the `Sparsity` annotations are measured again (a
trained weight may reach 0 by itself).

Weights annotated `SharedWeights` (``share-weights``) stay shared: at the start
of every epoch each one's groups are read off its values (`fxpress.sharing.Tie`:
k-means members hold the same centroid, hash members the same bucket), after
backward every member's gradient becomes its group's sum (signed for a hash;
Deep Compression's centroid gradient, so SGD moves a centroid by ``lr`` times
the sum of its members' gradients), and after the step every member takes its
group's value again; k-means zeros kept apart stay zero. A weight that no
longer obeys its annotation when an epoch starts (a hashed weight pruned by
``fine_tune(sparsify=...)``) is refused by name.

It lives apart from both trainers so that neither imports the other's
internals; errors name the trainer (``what``) that ran it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fxpress.errors import InputError, PassError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.sharing import SharedWeights, Tie
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.pattern import parse_pattern

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
Loss = Callable[[Any, torch.Tensor], torch.Tensor]
Objective = Callable[[tuple[torch.Tensor, ...], torch.Tensor, int], tuple[torch.Tensor, Mapping[str, float]]]
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
HOW = "give data as an iterable of (inputs..., target) tuples, e.g. data=[(x, y) for x, y in batches]"


def schedule_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch`: `lr` throughout (constant), or cosine-decayed from `lr` towards 0."""
    return lr if schedule == "constant" else lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def check_training(what: str, data: Any, epochs: int, lr: float, optimizer: Any, schedule: str) -> None:
    """Raise `PassError` naming the option to fix when the data or an option of a training run is unusable."""
    if data is None or isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise PassError(f"{what} needs training data, got {type(data).__name__}; {HOW}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise PassError(f"{what}: epochs must be a positive integer, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0 or math.isinf(lr):
        raise PassError(f"{what}: lr must be a positive learning rate (1e-3), got {lr!r}")
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise PassError(f"{what}: unknown optimizer {optimizer!r}; choose {', '.join(OPTIMIZERS)} or a factory")
    if schedule not in SCHEDULES:
        raise PassError(f"{what}: unknown schedule {schedule!r}; choose {', '.join(SCHEDULES)}")


@dataclass
class Training:
    """One run in progress: the private copy being trained, its optimizer, masks and progress bar."""

    graph: Graph
    opt: torch.optim.Optimizer
    masks: dict[str, torch.Tensor]
    bar: tqdm
    what: str

    def epoch(
        self, data: Iterable[Sequence[torch.Tensor]], objective: Objective, epoch: int, epochs: int, schedule: str
    ) -> dict[str, float]:
        """One pass over `data` at this epoch's learning rate; the mean loss (``"loss"``) and mean of each part."""
        for group in self.opt.param_groups:
            group["lr"] = schedule_lr(group.setdefault("initial_lr", group["lr"]), schedule, epoch, epochs)
        kept = [(self.graph.param(t), m) for t, m in self.masks.items()]
        tied = [(self.graph.param(t), tie) for t, tie in shared_ties(self.graph, self.what).items()]
        sums: dict[str, float] = {"loss": 0.0}
        batches = 0
        with torch.enable_grad():
            for item in data:
                inputs, target = split_item(self.graph, item, batches, self.what)
                self.opt.zero_grad(set_to_none=True)
                value, parts = objective(inputs, target, batches)
                scalar = float(value.detach())
                if not math.isfinite(scalar):
                    raise PassError(f"{self.what}: the loss is {scalar} at epoch {epoch}, batch {batches}; lower lr")
                value.backward()
                for p, keep in kept:
                    if p.grad is not None:
                        p.grad.masked_fill_(~keep, 0.0)
                for p, tie in tied:
                    if p.grad is not None:
                        p.grad = tie.gradient(p.grad)
                self.opt.step()
                apply_masks(self.graph, self.masks)
                for p, tie in tied:
                    tie.project(p)
                sums["loss"] += scalar
                for name, part in parts.items():
                    sums[name] = sums.get(name, 0.0) + part
                batches += 1
                self.bar.update(1)
                self.bar.set_postfix(epoch=epoch, loss=f"{scalar:.4f}")
        if batches == 0:
            raise PassError(
                f"{self.what}: the data is empty at epoch {epoch} (an exhausted generator? give a list); {HOW}"
            )
        return {name: total / batches for name, total in sums.items()}


@contextmanager
def masked_training(
    graph: Graph,
    *,
    what: str,
    optimizer: str | OptimizerFactory,
    lr: float,
    weight_decay: float,
    total: int | None,
    progress: bool,
    extra: Sequence[nn.Parameter] = (),
) -> Iterator[Training]:
    """Train `graph` (a private copy: it is changed in place) inside the block; see the module docstring."""
    params = _trainable(graph, what)
    opt = _optimizer(optimizer, [*params, *extra], lr, weight_decay)
    bar = tqdm(total=total, desc=what, unit="batch", leave=False, disable=not (progress and sys.stderr.isatty()))
    try:
        yield Training(graph, opt, annotated_masks(graph), bar, what)
    finally:
        bar.close()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    reannotate(graph)


def forward(graph: Graph, inputs: tuple[torch.Tensor, ...], index: int, what: str) -> Any:
    """`graph`'s module on `inputs`, its failure turned into an `InputError` that says what inputs it takes."""
    try:
        return graph.gm(*inputs)
    except RuntimeError as exc:
        raise InputError(
            f"{what}: the graph failed on data[{index}] ({exc}); inputs must have the captured "
            "dtypes and static sizes (capture with dynamic_shapes for a variable batch)"
        ) from exc


def split_item(graph: Graph, item: Any, index: int, what: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``(inputs, target)`` of one data item, which must be one tensor per graph input and a target."""
    names = graph.input_names
    if not isinstance(item, tuple | list) or not all(isinstance(t, torch.Tensor) for t in item):
        raise InputError(f"{what}: data[{index}] is a {type(item).__name__} of non-tensors; {HOW}")
    if len(item) != len(names) + 1:
        raise InputError(
            f"{what}: data[{index}] has {len(item)} tensors, but the graph takes {len(names)} inputs "
            f"({', '.join(names)}) and a target follows them; {HOW}"
        )
    return tuple(item[:-1]), item[-1]


def annotated_masks(graph: Graph) -> dict[str, torch.Tensor]:
    """Parameter path -> kept entries, for every weight annotated `Sparsity`."""
    return {
        str(n.target): graph.param(n).detach() != 0
        for n in graph.nodes("get_attr")
        if isinstance(notes.get(n, Sparsity.key), Sparsity)
    }


def shared_ties(graph: Graph, what: str) -> dict[str, Tie]:
    """Parameter path -> the groups its members train in, for every weight annotated `SharedWeights`."""
    ties: dict[str, Tie] = {}
    for node in graph.nodes("get_attr"):
        note = notes.get(node, SharedWeights.key)
        if not isinstance(note, SharedWeights):
            continue
        weight = graph.param(node).detach()
        problem = note.problem(weight)
        if problem is not None:
            raise PassError(
                f"{what}: weight {node.target} no longer holds its sharing ({problem}); "
                "prune before share-weights, not while training a shared graph"
            )
        ties[str(node.target)] = Tie.of(weight, note)
    return ties


def apply_masks(graph: Graph, masks: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None = None) -> None:
    """Zero the masked entries of the weights (and of the optimizer's state for them)."""
    with torch.no_grad():
        for target, keep in masks.items():
            p = graph.param(target)
            p.masked_fill_(~keep, 0.0)
            state = opt.state.get(p, {}) if opt is not None else {}
            for value in (v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == p.shape):
                value.masked_fill_(~keep, 0.0)  # Adam's moments, SGD's momentum


def reannotate(graph: Graph) -> None:
    """Re-measure every `Sparsity` annotation (zeros are kept, but a trained weight may reach 0)."""
    for node in graph.nodes("get_attr"):
        note = notes.get(node, Sparsity.key)
        if isinstance(note, Sparsity):
            notes.annotate(node, Sparsity.of(graph.param(node), parse_pattern(note.pattern)))


def _trainable(graph: Graph, what: str) -> list[nn.Parameter]:
    params = [p for p in graph.gm.parameters() if p.is_floating_point()]
    if not params:
        raise PassError(f"{what}: the graph has no float parameters to train")
    for p in params:
        p.requires_grad_(True)
    return params


def _optimizer(
    kind: str | OptimizerFactory, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if callable(kind):
        return kind(params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's global generator inside the block and restore the caller's afterwards (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
