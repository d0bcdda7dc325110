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
import math
import sys
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fxpress.errors import InputError, PassError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.properties import WEIGHT_DEPENDENT, Property
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.masks import MagnitudeMasks, MaskSource
from fxpress.sparse.pattern import parse_pattern, weight_sites

Loss = Callable[[Any, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
INVALIDATES = WEIGHT_DEPENDENT  # weights moved: observe and calibrate again
HOW = "give data as an iterable of (inputs..., target) tuples, e.g. data=[(x, y) for x, y in batches]"


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
    _check_options(data, epochs, lr, optimizer, schedule, ramp_epochs, sparsify)
    request = sparsify.magnitude_masks() if sparsify is not None else None
    new = graph.copy()
    params = _trainable(new)
    opt = _optimizer(optimizer, params, lr, weight_decay)
    masks = _annotated_masks(new)
    total = len(data) * epochs if isinstance(data, Sized) else None
    bar = tqdm(total=total, desc="fine-tune", unit="batch", leave=False, disable=not (progress and sys.stderr.isatty()))
    try:
        for epoch in range(epochs):
            if request is not None and epoch <= ramp_epochs:
                masks = _prune(new, request, epoch, ramp_epochs, masks, opt)
            for group in opt.param_groups:
                group["lr"] = schedule_lr(group.setdefault("initial_lr", group["lr"]), schedule, epoch, epochs)
            mean = _epoch(new, data, loss, opt, masks, epoch, bar)
            if history is not None:
                history.append(mean)
    finally:
        bar.close()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    _annotate(new)
    new.properties = (new.properties - INVALIDATES) | ({Property.SPARSIFIED} if request is not None else set())
    return new


def schedule_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch`: `lr` throughout (constant), or cosine-decayed from `lr` towards 0."""
    return lr if schedule == "constant" else lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _check_options(
    data: Any, epochs: int, lr: float, optimizer: Any, schedule: str, ramp_epochs: int, sparsify: MaskSource | None
) -> None:
    if data is None or isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise PassError(f"fine-tune needs training data, got {type(data).__name__}; {HOW}")
    if not isinstance(epochs, int) or epochs < 1:
        raise PassError(f"fine-tune: epochs must be a positive integer, got {epochs!r}")
    if not isinstance(lr, int | float) or not lr > 0 or math.isinf(lr):
        raise PassError(f"fine-tune: lr must be a positive learning rate (1e-3), got {lr!r}")
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise PassError(f"fine-tune: unknown optimizer {optimizer!r}; choose {', '.join(OPTIMIZERS)} or a factory")
    if schedule not in SCHEDULES:
        raise PassError(f"fine-tune: unknown schedule {schedule!r}; choose {', '.join(SCHEDULES)}")
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


def _trainable(graph: Graph) -> list[nn.Parameter]:
    params = [p for p in graph.gm.parameters() if p.is_floating_point()]
    if not params:
        raise PassError("fine-tune: the graph has no float parameters to train")
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


def _annotated_masks(graph: Graph) -> dict[str, torch.Tensor]:
    """Parameter path -> kept entries, for every weight annotated `Sparsity`."""
    return {
        str(n.target): graph.param(n).detach() != 0
        for n in graph.nodes("get_attr")
        if isinstance(notes.get(n, Sparsity.key), Sparsity)
    }


def _apply(graph: Graph, masks: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None = None) -> None:
    """Zero the masked entries of the weights (and of the optimizer's state for them)."""
    with torch.no_grad():
        for target, keep in masks.items():
            p = graph.param(target)
            p.masked_fill_(~keep, 0.0)
            state = opt.state.get(p, {}) if opt is not None else {}
            for value in (v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == p.shape):
                value.masked_fill_(~keep, 0.0)  # Adam's moments, SGD's momentum


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
    _apply(graph, new, opt)
    for site in weight_sites(graph):
        if str(site.node.target) in new:
            notes.annotate(site.node, Sparsity.of(graph.param(site.node), pattern))
    return new


def _epoch(
    graph: Graph,
    data: Iterable[Sequence[torch.Tensor]],
    loss: Loss,
    opt: torch.optim.Optimizer,
    masks: dict[str, torch.Tensor],
    epoch: int,
    bar: tqdm,
) -> float:
    kept = [(graph.param(t), m) for t, m in masks.items()]
    total, batches = 0.0, 0
    with torch.enable_grad():
        for item in data:
            inputs, target = _split(graph, item, batches)
            opt.zero_grad(set_to_none=True)
            try:
                out = graph.gm(*inputs)
            except RuntimeError as exc:
                raise InputError(
                    f"fine-tune: the graph failed on data[{batches}] ({exc}); inputs must have the captured "
                    "dtypes and static sizes (capture with dynamic_shapes for a variable batch)"
                ) from exc
            value = loss(out, target)
            scalar = float(value.detach())
            if not math.isfinite(scalar):
                raise PassError(f"fine-tune: the loss is {scalar} at epoch {epoch}, batch {batches}; lower lr")
            value.backward()
            for p, keep in kept:
                if p.grad is not None:
                    p.grad.masked_fill_(~keep, 0.0)
            opt.step()
            _apply(graph, masks)
            total, batches = total + scalar, batches + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{scalar:.4f}")
    if batches == 0:
        raise PassError(f"fine-tune: the data is empty at epoch {epoch} (an exhausted generator? give a list); {HOW}")
    return total / batches


def _split(graph: Graph, item: Any, index: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    names = graph.input_names
    if not isinstance(item, tuple | list) or not all(isinstance(t, torch.Tensor) for t in item):
        raise InputError(f"fine-tune: data[{index}] is a {type(item).__name__} of non-tensors; {HOW}")
    if len(item) != len(names) + 1:
        raise InputError(
            f"fine-tune: data[{index}] has {len(item)} tensors, but the graph takes {len(names)} inputs "
            f"({', '.join(names)}) and a target follows them; {HOW}"
        )
    return tuple(item[:-1]), item[-1]


def _annotate(graph: Graph) -> None:
    """Re-measure every `Sparsity` annotation (zeros are kept, but a trained weight may reach 0)."""
    for node in graph.nodes("get_attr"):
        note = notes.get(node, Sparsity.key)
        if isinstance(note, Sparsity):
            notes.annotate(node, Sparsity.of(graph.param(node), parse_pattern(note.pattern)))
