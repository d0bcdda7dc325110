"""Sensitivity: each layer under each method alone (every other layer float), evaluated, with its kernel cost.

    table = measure_layers(ctx, layers, methods)   # {ident: {method label: Trial}}

A method that does not apply to a layer (`Method.applies`), whose passes fail
on it, or that leaves it unchanged (prune-channels finds its channels frozen,
low-rank cannot shrink it) is recorded as skipped with the reason, and the
search never gives it to that layer. Lower weight bit widths are measured per
layer too (``int8 wN``: the layer alone static int8 with N-bit weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx

from fxpress.auto.layers import Layer
from fxpress.auto.methods import Method, Plan
from fxpress.auto.result import Trial
from fxpress.errors import FxpressError
from fxpress.ir.graph import Graph


def signature(graph: Graph, layer: Layer) -> tuple[Any, ...]:
    """What a method changes about `layer` in `graph`: its op, its weight's shape and values (or that it is gone)."""
    node = next((n for n in graph.nodes("call_function") if n.name == layer.name), None)
    if node is None:
        return ("gone",)
    weight = node.args[1] if len(node.args) > 1 else None
    if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
        w = graph.param(weight)
        return (str(node.target), tuple(w.shape), float(w.detach().double().abs().sum()), str(w.dtype))
    return (str(node.target),)


def bits_label(bits: int) -> str:
    return f"int8 w{bits}"


def alone_plans(layer: Layer, methods: Sequence[Method], weight_bits: Sequence[int]) -> list[tuple[str, Plan | str]]:
    """(label, plan or the reason it does not apply) of `layer` alone under each precision and each transform.

    A method that is both (``prune=0.25+int8``) is not evaluated alone: `combine` adds its parts' effects.
    """
    parts = {Method(m.transform, "float") for m in methods} | {Method("none", m.precision) for m in methods}
    out: list[tuple[str, Plan | str]] = []
    for m in sorted(parts - {Method()}):
        reason = m.applies(layer)
        out.append((m.label, reason if reason else Plan({layer.ident: m})))
    int8 = Method("none", "int8")
    for bits in weight_bits:
        if bits < 8:
            out.append((bits_label(bits), Plan({layer.ident: int8}, bits)))
    return out


def combine(method: Method, row: dict[str, Trial], float_accuracy: float) -> Trial:
    """The trial of a transform-and-precision method from its two parts' trials (effects add).

    A quantized part's effect is measured against the int8 rest (`trial_from`), so the sum is this
    layer's own cost; the model adds the rest's cost once per candidate.
    """
    transform, precision = row.get(Method(method.transform).label), row.get(Method("none", method.precision).label)
    for part in (transform, precision):
        if part is None or part.skipped is not None:
            why = part.skipped if part is not None else "not measured"
            return Trial(method.label, skipped=f"{(part.method if part else '?')}: {why}")
    assert transform is not None and precision is not None
    delta = (transform.delta or 0.0) + (precision.delta or 0.0)
    return Trial(method.label, accuracy=float_accuracy - delta, delta=delta)


def trial_from(label: str, outcome: dict[str, Any], reference: float) -> Trial:
    """A `Trial` from an evaluation outcome ({"accuracy", "effect"} or {"error"}); its effect against `reference`.

    `reference` is the float model's accuracy for a float method, and the int8 rest's (every layer float,
    the other quantizable ops int8) for a quantized one: what this layer adds by itself.
    """
    if "error" in outcome:
        reason = str(outcome["error"]).rpartition("): ")[2][:160]  # the pass's own message, without the context
        return Trial(label, skipped=f"its passes failed on this layer: {reason}")
    if not outcome.get("effect", True):
        return Trial(label, skipped="the passes leave this layer unchanged")
    acc = float(outcome["accuracy"])
    return Trial(label, accuracy=acc, delta=reference - acc)


def is_error(exc: BaseException) -> bool:
    """Errors that mean "this method cannot apply here", not "the search is broken"."""
    return isinstance(exc, FxpressError)
