"""What "accuracy" means to the search: a user function, or agreement with the float model.

    evaluation = default_evaluation(graph, held_out, metric="cosine")   # or "top1"
    score = call_evaluation(evaluation, candidate_graph, text)          # a finite float, higher is better

The default compares the candidate graph, run in eager PyTorch, with the float
graph on held-out batches: ``cosine`` is the mean over samples of the cosine
between the flattened outputs of each sample (every output tensor of the
sample, concatenated); ``top1`` the fraction of samples whose arg-max over the
last dimension of the first output agrees (for classifiers). A user function
takes the optimized `fxpress.ir.graph.Graph` (callable like the model) and
returns a float, higher is better (an accuracy on labelled data, say).

`call_evaluation` turns what goes wrong into an `AutoError` naming the
candidate's pipeline: the function raised (the original error chained), or
returned something that is not a finite number. `check_batches` checks
calibration and held-out batches against the graph's inputs (count, dtype,
static sizes) before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fxpress.auto.errors import AutoError
from fxpress.errors import InputError
from fxpress.ir.graph import Graph
from fxpress.quant.calib_data import check_batch

Evaluation = Callable[[Graph], float]
METRICS = ("cosine", "top1")


def check_batches(graph: Graph, batches: Any, what: str) -> list[tuple[torch.Tensor, ...]]:
    """`batches` as a list of input tuples matching `graph`'s inputs; else `AutoError` saying what differs."""
    if isinstance(batches, torch.Tensor):
        raise AutoError(
            f"{what} must be a list of input tuples, one tensor per graph input ({', '.join(graph.input_names)}), "
            f"got one tensor; e.g. {what}=[(x,) for x in batches]"
        )
    if isinstance(batches, str | bytes) or not hasattr(batches, "__iter__"):
        raise AutoError(f"{what} must be a list of input tuples, got {type(batches).__name__}")
    items = list(batches)
    if not items:
        raise AutoError(f"{what} is empty; give at least one tuple of input tensors")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(check_batch(graph, tuple(item) if isinstance(item, list) else item, i))
        except InputError as exc:
            raise AutoError(f"{what}: {exc}") from None
    return out


def _flat(out: Any, n: int) -> torch.Tensor:
    """Every output tensor of a model call, each sample's values on one row: [n, -1], float64."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return torch.cat([t.detach().reshape(n, -1).to(torch.float64) for t in leaves], dim=1)


def _first(out: Any) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0]


def default_evaluation(float_graph: Graph, held_out: Sequence[tuple[torch.Tensor, ...]], metric: str) -> Evaluation:
    """Mean per-sample output cosine (``cosine``) or top-1 agreement (``top1``) with `float_graph` on `held_out`."""
    if metric not in METRICS:
        raise AutoError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    with torch.no_grad():
        refs = [float_graph(*batch) for batch in held_out]
    sizes = [int(batch[0].shape[0]) if batch[0].dim() else 1 for batch in held_out]

    def evaluate(graph: Graph) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for batch, ref, n in zip(held_out, refs, sizes, strict=True):
                out = graph(*batch)
                if metric == "cosine":
                    cos = torch.nn.functional.cosine_similarity(_flat(out, n), _flat(ref, n), dim=1)
                    total += float(cos.sum())
                else:
                    total += float((_first(out).argmax(-1) == _first(ref).argmax(-1)).double().mean()) * n
                count += n
        return total / count

    evaluate.__qualname__ = f"default_evaluation[{metric}]"
    return evaluate


def call_evaluation(evaluation: Evaluation, graph: Graph, text: str) -> float:
    """`evaluation(graph)` as a finite float; `AutoError` naming the candidate pipeline `text` otherwise."""
    shown = text or "(no passes: the float model)"
    try:
        value = evaluation(graph)
    except Exception as exc:
        raise AutoError(
            f"the evaluation function raised {type(exc).__name__}: {exc} -- on the candidate {shown!r}; "
            "fix the function (it takes an fxpress Graph, callable like the model, and returns a float, "
            "higher is better)"
        ) from exc
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise AutoError(
            f"the evaluation function returned {value!r} ({type(value).__name__}) on the candidate {shown!r}; "
            "it must return a float, higher is better"
        ) from None
    if not math.isfinite(score):
        raise AutoError(
            f"the evaluation function returned {score} on the candidate {shown!r}; it must return a finite "
            "float (higher is better): check it for a division by zero or an empty batch"
        )
    return score
