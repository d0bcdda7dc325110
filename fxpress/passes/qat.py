"""qat: quantization-aware training in one pass (fake-quantize, train, freeze-fake-quant).

    observe{per-channel=true,weight-bits=4},calibrate,qat{epochs=2,lr=0.0001},fold-qdq

Wraps `fxpress.train.qat`: every observed value of a private copy is
fake-quantized (straight-through rounding; ``learn=true``: LSQ-learned scales
and affine zero points, each scale stepping at ``qparams-lr`` times its size;
``learn=false``: the calibrated ones, fixed), the
parameters train for ``epochs`` on ``data`` with ``optimizer`` / ``lr`` /
``schedule`` minimizing ``loss(graph(*inputs), target)`` (default
cross-entropy; sparsity masks stay fixed; ``seed`` makes a run repeat
exactly), and the trained scales and zero
points become the graph's quantization parameters again. ``data`` and
``loss`` are Python-only, as fine-tune's: ``Qat(data=batches, epochs=2)``.
For a teacher's loss (distillation with a fake-quantized student) run
``fake-quantize``, ``distil``, ``freeze-fake-quant`` instead.

Requires: ``observed``, ``calibrated``. Establishes: ``qat-trained``; keeps
``calibrated`` (the parameters are trained, not dropped). Numerics: changes
the function (that is the point); fold-qdq afterwards gives the int8 ops of
post-training quantization, bit-exact with their reference. Bad input: no
data (the text form cannot carry it), a graph without observers or
calibration, and what fine-tune refuses (epochs < 1, lr <= 0, an unknown
optimizer or schedule, a non-finite loss). Leaves alone: the given graph
(it trains a copy), sparsity masks (zeros stay zero), unobserved values,
integer tensors and buffers. Sits after calibrate, before fold-qdq.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fxpress.errors import PassError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult, print_pass
from fxpress.passes.training import check_training_fields
from fxpress.quant.annotations import QuantParams
from fxpress.train.fine_tune import HOW
from fxpress.train.qat import qat

_HOW = f"give it in Python: fxpress.passes.Qat(data=[(x, y), ...], epochs=2); {HOW}"


@dataclass(frozen=True)
class Qat(Pass):
    """Quantization-aware training of a calibrated graph (see the module docstring)."""

    name = "qat"
    requires = frozenset({Property.OBSERVED, Property.CALIBRATED})
    establishes = frozenset({Property.QAT_TRAINED})
    forbids = frozenset({Property.QUANTIZED})

    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)
    epochs: int = 1
    lr: float = 1e-4
    learn: bool = True
    qparams_lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_fields(self, _HOW)
        if not self.qparams_lr > 0:
            raise ValueError(f"qparams-lr must be > 0 (a relative rate, 1e-3), got {self.qparams_lr}")

    def text(self) -> str:
        return print_pass(dataclasses.replace(self, data=None, loss=None))  # data and loss are not pipeline text

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        if self.data is None:
            raise PassError(f"qat needs training data, and pipeline text cannot carry it; {_HOW}")
        losses: list[float] = []
        trained = qat(
            graph,
            self.data,
            epochs=self.epochs,
            lr=self.lr,
            loss=self.loss or F.cross_entropy,
            learn=self.learn,
            qparams_lr=self.qparams_lr,
            optimizer=self.optimizer,
            schedule=self.schedule,
            seed=self.seed,
            history=losses,
        )
        stats = {"epochs": self.epochs, "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6)}
        return PassResult(trained, modified=_changed(graph, trained), stats=stats)


def _changed(before: Graph, after: Graph) -> bool:
    """Some tensor or some quantization parameter moved (a tiny lr can leave them all where they were)."""
    old, new = before.params(), after.params()
    if old.keys() != new.keys() or any(not torch.equal(old[k], new[k]) for k in old):
        return True
    facts = {n.name: notes.get(n, QuantParams.key) for n in before.nodes()}
    return any(notes.get(n, QuantParams.key) != facts.get(n.name) for n in after.nodes())
