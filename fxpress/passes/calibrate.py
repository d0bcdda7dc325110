"""calibrate: run the observed graph on calibration data and record each activation's quantization parameters.

    %y = aten.linear(%x, %w, %b)  # observe act minmax i8 affine
      -> %y = aten.linear(%x, %w, %b)  # observe act minmax i8 affine; qparams i8 affine scale=0.0213 zp=-7

Builds a fresh observer for every non-shared activation slot, runs the graph
in eager PyTorch (an fx Interpreter) on each batch of `data`, feeds every
observed node's output to its observer as soon as the node has run (before an
in-place op can change it), then writes a `QuantParams` annotation on each
observed node; shared slots take their input's parameters.

`data` is a Python iterable (a list, a DataLoader: something that can be
iterated again if the pass runs again) whose items are tuples of tensors, one
per graph input, with the graph's dtypes and static sizes (dynamic sizes may
vary). It is a Python-only option: ``Calibrate(data=batches, limit=8)``; the
text form ``calibrate{limit=8}`` prints and parses the other options, and a
``calibrate`` run without data fails with a message that says so. ``limit``
caps the number of batches (0: all). A progress bar shows on a terminal or with FXPRESS_PROGRESS=1.

``bias-correction=true`` also records, on every static linear and 2-D conv
whose weight observe quantized, the mean of its input over the same data
(an `InputMean`: per feature for a linear, per channel and position for a
conv); ``fold-qdq`` subtracts from each such layer's bias the mean output
shift its int8 weights cause (fxpress.quant.bias_correction). Without the
option, a run takes off the means an earlier run left.

Parameters depend only on the data given to this run (observers are not kept
between runs), so the same data gives the same parameters and a second run
reports ``modified=False``.

Requires: ``observed``. Establishes: ``calibrated``. Numerics: exact (the
graph is not changed; the parameters are those the observers choose on this
data). Bad input, each a clear error: no data or an empty iterable
(`PassError`); an item that is not a tuple of tensors, or whose count, dtype or
static sizes differ from the graph's inputs (`InputError`, naming the input and
both shapes); NaN or Inf in an observed activation (`PassError` naming the node).
Leaves alone: a graph with nothing observed.
Sits after ``observe``, before ``fold-qdq``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from fxpress.errors import PassError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.opsets import CONV, is_transposed_conv, packet
from fxpress.ir.printer import locate
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult, print_pass
from fxpress.progress import bar
from fxpress.quant.annotations import ObserverSlot, QuantParams
from fxpress.quant.bias_correction import InputMean, MeanCollector
from fxpress.quant.calib_data import check_batch
from fxpress.quant.observers import Observer

aten = torch.ops.aten
_HOW = "give it in Python: fxpress.passes.Calibrate(data=[(x,), ...]), one tuple of input tensors per batch"


class _Feeder(torch.fx.Interpreter):
    """Runs the graph, handing each observed node's output to its observer (and layer inputs to `means`)."""

    def __init__(
        self,
        graph: Graph,
        observers: dict[torch.fx.Node, Observer],
        means: dict[torch.fx.Node, MeanCollector] | None = None,
    ) -> None:
        super().__init__(graph.gm)
        self.owner, self.observers, self.means = graph, observers, means or {}
        self.extra_traceback = False  # our errors locate the node themselves

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        collector = self.means.get(n)
        if collector is not None:  # the input is still in env: the interpreter frees it after this returns
            collector.add(self.env[n.args[0]])  # type: ignore[index]
        observer = self.observers.get(n)
        if observer is not None:
            if not bool(torch.isfinite(out).all()):
                what = "NaN" if bool(torch.isnan(out).any()) else "Inf"
                raise PassError(
                    f"{what} in the output of {n.name} ({n.target}), which is to be quantized; "
                    "check the calibration data and the model",
                    node=n.name,
                    notes=[locate(self.owner, n)],
                )
            observer.observe(out)
        return out


@dataclass(frozen=True)
class Calibrate(Pass):
    """Observe activations on calibration data (see the module docstring)."""

    name = "calibrate"
    requires = frozenset({Property.OBSERVED})
    establishes = frozenset({Property.CALIBRATED})
    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)
    limit: int = 0
    bias_correction: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.data, str | bytes):
            raise ValueError(f"calibration data cannot be given as text; {_HOW}")
        if self.data is not None and not isinstance(self.data, Iterable):
            raise ValueError(f"data must be an iterable of input tuples, got {type(self.data).__name__}; {_HOW}")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0: all batches), got {self.limit}")

    def text(self) -> str:
        return print_pass(dataclasses.replace(self, data=None))  # data is not pipeline text

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        if self.data is None:
            raise PassError(f"calibrate needs calibration data, and pipeline text cannot carry it; {_HOW}")
        slots = {n: s for n in graph.nodes() if isinstance(s := notes.get(n, ObserverSlot.key), ObserverSlot)}
        observers = {n: s.spec.make() for n, s in slots.items() if s.role == "activation" and s.spec is not None}
        if not observers:
            return PassResult(graph, modified=False, stats={"batches": 0, "observed": 0})
        means = (
            {n: MeanCollector(packet(n) is not aten.linear) for n in _correctable(graph)}
            if self.bias_correction
            else {}
        )
        batches = self._feed(graph, observers, means)
        params: dict[torch.fx.Node, QuantParams] = {}
        for node, slot in slots.items():
            if slot.role != "activation":
                continue
            src = node
            while slots[src].shared:  # a shared slot's args[0] is observed (ObserverSlot.check)
                src = src.args[0]  # type: ignore[assignment]
            params[node] = params[src] if src in params else self._params(graph, src, observers[src])
            params[src] = params[node]
        modified = False
        for node, qp in params.items():
            if notes.get(node, QuantParams.key) != qp:
                notes.annotate(node, qp)
                modified = True
        modified |= _record_means(graph, means)
        stats = {"batches": batches, "observed": len(observers)} | ({"input_means": len(means)} if means else {})
        return PassResult(graph, modified=modified, stats=stats)

    def _params(self, graph: Graph, node: torch.fx.Node, observer: Observer) -> QuantParams:
        if observer.empty:
            raise PassError(
                f"{node.name} produced only empty tensors; nothing to observe",
                node=node.name,
                notes=[locate(graph, node)],
            )
        return observer.qparams()

    def _feed(
        self, graph: Graph, observers: dict[torch.fx.Node, Observer], means: dict[torch.fx.Node, MeanCollector]
    ) -> int:
        total = len(self.data) if isinstance(self.data, Sized) else None
        if total is not None and self.limit:
            total = min(total, self.limit)
        feeder, batches = _Feeder(graph, observers, means), 0
        assert self.data is not None
        items = itertools.islice(self.data, self.limit) if self.limit else self.data
        with torch.no_grad(), bar(items, total=total, desc="calibrate", unit="batch") as batches_bar:
            for item in batches_bar:
                feeder.run(*check_batch(graph, item, batches))
                batches += 1
        if batches == 0:
            raise PassError(
                "the calibration data is empty (an exhausted generator? give a list or a DataLoader); " + _HOW
            )
        return batches


def _correctable(graph: Graph) -> list[torch.fx.Node]:
    """The static linears and 2-D convs whose weight observe quantized: the layers bias correction serves."""
    out = []
    for node in graph.nodes("call_function"):
        kind = packet(node)
        if kind is not aten.linear and (kind not in CONV or is_transposed_conv(node)):
            continue
        w = node.args[1] if len(node.args) > 1 else None
        if not isinstance(w, torch.fx.Node) or not isinstance(notes.get(w, QuantParams.key), QuantParams):
            continue
        x = node.args[0]
        if not isinstance(x, torch.fx.Node) or notes.get(node, "dynamic") is not None:
            continue
        if kind is aten.linear or x.meta["val"].dim() == 4:
            out.append(node)
    return out


def _record_means(graph: Graph, means: dict[torch.fx.Node, MeanCollector]) -> bool:
    """Put each layer's `InputMean` on it, and take stale ones off every other node; whether anything changed."""
    changed = False
    for node in graph.nodes():
        new = means[node].result() if node in means else None
        old = notes.get(node, InputMean.key)
        if new is None and old is not None:
            notes.annotations(node).pop(InputMean.key)
            changed = True
        elif new is not None and old != new:
            notes.annotate(node, new)
            changed = True
    return changed
