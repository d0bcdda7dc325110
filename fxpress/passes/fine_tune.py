"""fine-tune: train the graph's parameters on data, keeping every sparsity mask fixed.

    %fc.weight = param f32[64,32]  # sparsity 16x1 density=0.1
      -> %fc.weight = param f32[64,32]  # sparsity 16x1 density=0.1     (new values, same zeros)

A thin pass over `fxpress.train.fine_tune`: ``epochs`` passes over ``data``
with ``optimizer`` (adam, adamw, sgd) at learning rate ``lr`` (``schedule``:
constant, or cosine-decayed per epoch), minimizing
``loss(graph(*inputs), target)`` (default: cross-entropy). Zeros of weights
annotated `Sparsity` stay zero (masked gradients, masks applied again after
each step, optimizer state cleared at masked entries). A tqdm progress bar
shows on a terminal.

`data` is Python-only, like calibrate's: an iterable of ``(inputs..., target)``
tuples that can be iterated once per epoch (a list, a DataLoader), given as
``FineTune(data=batches, epochs=3)``; ``loss`` is Python-only too. The text
form ``fine-tune{epochs=3,lr=0.001}`` prints and parses the other options, and
a run without data fails with a message that says how to give it. For gradual
pruning call `fxpress.train.fine_tune(..., sparsify=..., ramp_epochs=k)`.

Requires: nothing. Establishes: ``fine-tuned``; invalidates ``observed`` and
``calibrated`` (weights move: observe and calibrate afterwards). Numerics:
changes the function (that is the point); deterministic for the same data and
options. Bad input: no data, an empty iterable or an exhausted generator, an
item that is not a tuple of tensors with one per input plus a target, epochs
< 1, lr <= 0, an unknown optimizer, a non-finite loss (each a clear error).
Leaves alone: the zeros of annotated weights, buffers (batch-norm running
statistics) and integer parameters.
Sits after ``prune-channels`` / ``sparsify``, before ``annotate-sparsity``
and quantization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fxpress.errors import PassError
from fxpress.ir.graph import Graph
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult, print_pass
from fxpress.passes.training import check_training_fields
from fxpress.train.fine_tune import HOW, fine_tune

_HOW = f"give it in Python: fxpress.passes.FineTune(data=[(x, y), ...], epochs=3); {HOW}"


@dataclass(frozen=True)
class FineTune(Pass):
    """Train the parameters on data with fixed sparsity masks (see the module docstring)."""

    name = "fine-tune"
    establishes = frozenset({Property.FINE_TUNED})
    invalidates = WEIGHT_DEPENDENT
    forbids = frozenset({Property.QUANTIZED})

    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)
    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        check_training_fields(self, _HOW)

    def text(self) -> str:
        return print_pass(dataclasses.replace(self, data=None, loss=None))  # data and loss are not pipeline text

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        if self.data is None:
            raise PassError(f"fine-tune needs training data, and pipeline text cannot carry it; {_HOW}")
        losses: list[float] = []
        tuned = fine_tune(
            graph,
            self.data,
            epochs=self.epochs,
            lr=self.lr,
            loss=self.loss or F.cross_entropy,
            optimizer=self.optimizer,
            schedule=self.schedule,
            history=losses,
        )
        before, after = graph.params(), tuned.params()
        modified = any(not torch.equal(before[k], after[k]) for k in before)
        stats = {"epochs": self.epochs, "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6)}
        return PassResult(tuned, modified=modified, stats=stats)
