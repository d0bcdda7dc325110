"""`fine_tune`: train a captured graph's parameters on data, keeping its sparsity masks fixed.

    tuned = fine_tune(pruned, batches, epochs=5, lr=1e-3)            # recover accuracy
    tuned = fine_tune(graph, batches, epochs=10, lr=1e-3,
                      sparsify=MagnitudeMasks(density=0.08), ramp_epochs=6)  # gradual magnitude pruning

Returns a new `Graph` (the given one is never changed) whose float parameters
were trained with `loss(graph(*inputs), target)` on `data`, an iterable of
``(inputs..., target)`` tuples that can be iterated once per epoch (a list, a
DataLoader). Every zero of a weight annotated `Sparsity` stays zero: its
gradient is masked before each step, the mask is applied again after it, and
the optimizer's state (Adam's moments) is cleared at masked entries whenever a
mask changes, so momentum cannot resurrect a pruned weight.

With ``sparsify`` (a `fxpress.sparse.MagnitudeMasks`, or the ``sparsify``
pass, which states the same request) the masks come from it instead, on a gradual schedule
(Zhu & Gupta, 2017): at the start of epoch ``e <= ramp_epochs`` the weights
are magnitude-pruned to density ``d + (1 - d) * (1 - e / ramp_epochs) ** 3``
(1.0 at epoch 0, the target ``d`` from epoch ``ramp_epochs`` on), then training
continues at the final masks; ``ramp_epochs=0`` prunes once, before training.
An N:M pattern fixes its density, so it is applied at once.

The graph keeps the semantics it was captured with: a model captured in eval
mode trains with batch norm on its running statistics (which stay as they are)
and without dropout. Parameters are made trainable on the private copy only
and frozen again (``requires_grad=False``) before it is returned. The new
graph loses the ``observed`` and ``calibrated`` properties (weights moved;
observe and calibrate again) and, with ``sparsify``, gains ``sparsified``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any

import torch
import torch.nn.functional as F

from fxpress.errors import PassError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.masks import MagnitudeMasks, MaskSource
from fxpress.sparse.pattern import parse_pattern, weight_sites
from fxpress.train.loop import (
    HOW,
    OPTIMIZERS,
    SCHEDULES,
    OptimizerFactory,
    apply_masks,
    check_training,
    forward,
    masked_training,
    schedule_lr,
)

Loss = Callable[[Any, torch.Tensor], torch.Tensor]
# the loop's names stay importable from here (the fine-tune and qat passes and the QAT trainer import them)
__all__ = ["HOW", "OPTIMIZERS", "SCHEDULES", "Loss", "OptimizerFactory", "fine_tune", "ramp_density", "schedule_lr"]
INVALIDATES = WEIGHT_DEPENDENT  # weights moved: observe and calibrate again


def ramp_density(final: float, epoch: int, ramp_epochs: int) -> float:
    """Zhu & Gupta's cubic schedule: 1.0 at epoch 0, `final` from `ramp_epochs` on."""
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return final
    return final + (1.0 - final) * (1.0 - epoch / ramp_epochs) ** 3


def fine_tune(
    graph: Graph,
    data: Iterable[Sequence[torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    loss: Loss = F.cross_entropy,
    optimizer: str | OptimizerFactory = "adam",
    schedule: str = "constant",
    weight_decay: float = 0.0,
    sparsify: MaskSource | None = None,
    ramp_epochs: int = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> Graph:
    """Train a copy of `graph` on `data` with fixed sparsity masks (see the module docstring).

    ``schedule="cosine"`` decays the learning rate of each epoch as
    ``lr * (1 + cos(pi * epoch / epochs)) / 2``. `history`, when given, receives
    the mean loss of every epoch.
    """
    check_training("fine-tune", data, epochs, lr, optimizer, schedule)
    _check_sparsify(epochs, ramp_epochs, sparsify)
    request = sparsify.magnitude_masks() if sparsify is not None else None
    new = graph.copy()

    def objective(
        inputs: tuple[torch.Tensor, ...], target: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return loss(forward(new, inputs, index, "fine-tune"), target), {}

    total = len(data) * epochs if isinstance(data, Sized) else None
    kwargs: dict[str, Any] = {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "total": total}
    with masked_training(new, what="fine-tune", progress=progress, **kwargs) as run:
        for epoch in range(epochs):
            if request is not None and epoch <= ramp_epochs:
                run.masks = _prune(new, request, epoch, ramp_epochs, run.masks, run.opt)
            mean = run.epoch(data, objective, epoch, epochs, schedule)["loss"]
            if history is not None:
                history.append(mean)
    new.properties = (new.properties - INVALIDATES) | ({Property.SPARSIFIED} if request is not None else set())
    return new


def _check_sparsify(epochs: int, ramp_epochs: int, sparsify: MaskSource | None) -> None:
    if ramp_epochs < 0 or (ramp_epochs and sparsify is None):
        raise PassError(f"fine-tune: ramp_epochs={ramp_epochs} needs a sparsify=MagnitudeMasks(...) to ramp, and >= 0")
    if sparsify is not None and not callable(getattr(sparsify, "magnitude_masks", None)):
        raise PassError(
            f"fine-tune: sparsify must be a MagnitudeMasks (or a Sparsify pass), got {type(sparsify).__name__}"
        )
    if sparsify is not None and ramp_epochs >= epochs:
        raise PassError(
            f"fine-tune: ramp_epochs ({ramp_epochs}) must be below epochs ({epochs}), so that training "
            "continues at the final masks"
        )


def _prune(
    graph: Graph,
    request: MagnitudeMasks,
    epoch: int,
    ramp_epochs: int,
    masks: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
) -> dict[str, torch.Tensor]:
    """Magnitude masks of `request` at this epoch's density, merged with the masks there were."""
    pattern = parse_pattern(request.pattern)
    density = pattern.nm_density if pattern.is_nm else ramp_density(request.target_density, epoch, ramp_epochs)
    if density >= 1.0:
        return masks
    step = request if pattern.is_nm else dataclasses.replace(request, density=density)
    new = dict(masks)
    for target, keep in step.masks(graph).items():  # a zero stays a zero: masks only shrink
        new[target] = keep & masks[target] if target in masks else keep
    apply_masks(graph, new, opt)
    for site in weight_sites(graph):
        if str(site.node.target) in new:
            notes.annotate(site.node, Sparsity.of(graph.param(site.node), pattern))
    return new
