"""`qat`: quantization-aware training of a calibrated graph (fake-quantize, train, freeze).

    observed = fxpress.optimize(graph, [Observe(per_channel=True, weight_bits=4), Calibrate(data=batches)])
    trained = qat(observed, train_batches, epochs=2, lr=1e-4)        # still calibrated, parameters trained
    int8 = fxpress.optimize(trained, [FoldQDQ()])                   # the same int8 ops as post-training

Returns a new `Graph` (the given one is never changed): a copy of `graph`
with every observed value wrapped in ``fxpress.fake_quantize``
(`fxpress.quant.qat_graph.insert_fake_quant`), trained with
fine-tune's masked loop (`fxpress.train.loop`) on ``loss(graph(*inputs),
target)`` (straight-through gradients through the rounding; sparsity masks
stay fixed, as in fine-tune; a progress bar on a terminal; each epoch's mean
loss logged at INFO and appended to `history`; ``seed`` seeds torch's
generator inside the run only, so a run repeats exactly),
then frozen back (`freeze_fake_quant`): its float weights moved, and each
value's `QuantParams` hold the scale and zero point that training used.

With ``learn=True`` (LSQ, Esser et al. 2020) the scales of weights and
activations, and the zero points of affine activations, train with the
weights, each scale at a rate relative to its size (``qparams_lr * scale``;
Adam's steps do not scale with the parameter, and step sizes span 1e-4 to 1)
and each zero point at ``qparams_lr * (qmax - qmin)``; with ``learn=False``
they stay as calibration (and observe, for weights) chose them, and only the
weights adapt to the fixed grid. Lower
weight bit widths come from observe (``weight-bits=4``): the integer range
travels in each scheme, so this trainer needs no bit-width option.

For a loss that needs a teacher (distillation with a quantized student), run
the three steps apart: ``fake-quantize``, then ``distil`` (or ``fine-tune``),
then ``freeze-fake-quant``.

Bad input: a graph without observers or without calibration (clear errors
naming the pass to run), and every bad input fine-tune refuses (data, epochs,
lr, optimizer, schedule, non-finite loss).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence, Sized
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fxpress.errors import PassError
from fxpress.ir.graph import Graph
from fxpress.ir.properties import Property
from fxpress.quant.qat_graph import freeze_fake_quant, insert_fake_quant, is_fake_quant
from fxpress.train.loop import Loss, OptimizerFactory, check_training, forward, masked_training, seeded


def qat(
    graph: Graph,
    data: Iterable[Sequence[torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    loss: Loss = F.cross_entropy,
    learn: bool = True,
    qparams_lr: float = 1e-3,
    optimizer: str | OptimizerFactory = "adam",
    schedule: str = "constant",
    weight_decay: float = 0.0,
    seed: int | None = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> Graph:
    """Train a fake-quantized copy of `graph` and freeze it (see the module docstring)."""
    check_training(WHAT, data, epochs, lr, optimizer, schedule)
    if not qparams_lr > 0:
        raise PassError(f"{WHAT}: qparams_lr must be > 0 (a relative rate, 1e-3), got {qparams_lr!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise PassError(f"{WHAT}: seed must be an integer or None, got {seed!r}")
    trained = graph.copy()
    insert_fake_quant(trained, learn=learn)
    if learn and isinstance(optimizer, str):
        optimizer = _relative_steps(trained, optimizer, lr, qparams_lr, weight_decay)

    def objective(
        inputs: tuple[torch.Tensor, ...], target: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return loss(forward(trained, inputs, index, WHAT), target), {}

    total = len(data) * epochs if isinstance(data, Sized) else None
    kwargs: dict[str, Any] = {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "total": total}
    with seeded(seed), masked_training(trained, what=WHAT, progress=progress, **kwargs) as run:
        for epoch in range(epochs):
            mean = run.epoch(data, objective, epoch, epochs, schedule)["loss"]
            log.info("%s: epoch %d/%d, loss %.6f", WHAT, epoch + 1, epochs, mean)
            if history is not None:
                history.append(mean)
    freeze_fake_quant(trained)
    trained.properties = (trained.properties - {Property.FAKE_QUANTIZED}) | {
        Property.OBSERVED,
        Property.CALIBRATED,
        Property.QAT_TRAINED,
    }
    return trained


WHAT = "qat"
log = logging.getLogger(__name__)


def _relative_steps(graph: Graph, kind: str, lr: float, qparams_lr: float, weight_decay: float) -> OptimizerFactory:
    """An optimizer whose learned scales step relative to their size, and zero points to their range.

    Adam's step is about ``lr`` in absolute terms whatever the gradient's
    size, so one learning rate cannot suit weights (~0.05), step sizes from
    1e-4 to 1 and zero points in integer units. Each scale gets the rate
    ``qparams_lr * scale`` (a step of ~0.1 % of itself at the default), each
    zero point ``qparams_lr * (qmax - qmin)``, neither any weight decay; the
    weights keep ``lr``. The groups follow `graph.gm.parameters()`'s order,
    which the trainer's private copy keeps.
    """
    rates: dict[str, float] = {}
    for node in graph.nodes("call_function"):
        if is_fake_quant(node):
            scale, zero, qmin, qmax = node.args[1], node.args[2], node.args[3], node.args[4]
            assert isinstance(scale, torch.fx.Node) and isinstance(zero, torch.fx.Node)
            assert isinstance(qmin, int) and isinstance(qmax, int)
            rates[str(scale.target)] = qparams_lr * float(graph.param(scale).abs().mean())
            rates[str(zero.target)] = qparams_lr * (qmax - qmin)
    plan = [rates.get(name) for name, p in graph.gm.named_parameters() if p.is_floating_point()]

    def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if len(params) != len(plan):
            raise AssertionError(f"qat: {len(params)} trainable tensors, {len(plan)} planned")
        weights = [p for p, rate in zip(params, plan, strict=True) if rate is None]
        groups: list[dict[str, object]] = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
        groups += [
            {"params": [p], "lr": rate, "weight_decay": 0.0}
            for p, rate in zip(params, plan, strict=True)
            if rate is not None
        ]
        if kind == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9)
        return (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(groups, lr=lr)

    return make
