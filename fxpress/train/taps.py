"""Taps: the values of named nodes of a captured graph, read during a forward (distillation's features).

    taps = resolve_taps(graph, ["%3", "relu_1"], role="student")   # checked before any training
    out, values = TapReader(graph, taps).run_taps(x)                # values[i]: the tensor of taps[i]

A tap names a node the way ``print(graph)`` prints it, ``%7`` (the ``%`` may
be left out), or by its fx name (``relu_1``, as `graph.fx` shows it). Only a computed float
tensor can be tapped: a name of an input or a parameter, or of a value that
is not one float tensor (a tuple, a size, integer indices), is refused saying
so; an unknown name is refused listing the nearest names (difflib) with their
printed lines, so that a typo shows what was meant.

`TapReader` runs the graph's own module through an fx Interpreter that keeps
the tapped values; gradients flow through it as through the module, so a
student's tapped features train it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from fxpress.errors import PassError
from fxpress.ir.graph import Graph
from fxpress.ir.printer import node_names, print_graph


@dataclass(frozen=True)
class Tap:
    """A tapped node: the name it was asked by, the node, and its printed line (for messages)."""

    name: str
    node: torch.fx.Node
    line: str

    @property
    def value(self) -> torch.Tensor:
        """The node's fake tensor (shape and dtype; the batch may be symbolic)."""
        val = self.node.meta["val"]
        assert isinstance(val, torch.Tensor)
        return val

    @property
    def shape(self) -> tuple[Any, ...]:
        return tuple(self.value.shape)


def resolve_taps(graph: Graph, names: Sequence[str], *, role: str, what: str = "distil") -> list[Tap]:
    """The `Tap` of each name in `graph`; `PassError` for an unknown name or a node that cannot be tapped.

    `role` ("student", "teacher") says in messages which graph was searched.
    """
    printed = node_names(graph)
    lines = _printed_lines(graph)
    by_name: dict[str, torch.fx.Node] = {}
    for n, printed_name in printed.items():
        by_name.setdefault(f"%{printed_name}", n)
        by_name.setdefault(n.name, n)
    computed = [n for n in graph.nodes() if n.op == "call_function"]
    shown = {f"%{printed[n]}": lines.get(f"%{printed[n]}", f"%{printed[n]}") for n in computed}
    shown |= {n.name: f"{shown[f'%{printed[n]}']}   (fx name {n.name})" for n in computed}
    taps = []
    for name in names:
        node = by_name.get(name) or by_name.get(f"%{name}")  # "%5", "5", "relu_1", "features.0.weight"
        if node is None:
            raise PassError(_unknown(what, role, name, shown, len(computed)), node=name)
        line = lines.get(f"%{printed[node]}", f"%{printed[node]}")
        if node.op != "call_function":
            kind = "an input" if node.op == "placeholder" else "a parameter"
            raise PassError(
                f"{what}: tap {name!r} names {kind} of the {role} graph; tap a computed value (%0, %1, ...)",
                node=name,
            )
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            kind = f"{val.dtype} tensor" if isinstance(val, torch.Tensor) else type(val).__name__
            raise PassError(
                f"{what}: tap {name!r} of the {role} graph is a {kind}, not a float tensor; tap a float value "
                "(for an op with several results, tap the getitem that selects one)",
                node=name,
                notes=[f"  {line}"],
            )
        taps.append(Tap(name, node, line))
    return taps


class TapReader(torch.fx.Interpreter):
    """Runs a graph's module and keeps the values of its taps (gradients flow as through the module)."""

    def __init__(self, graph: Graph, taps: Sequence[Tap]) -> None:
        super().__init__(graph.gm)
        self.extra_traceback = False
        self.taps = list(taps)
        self.wanted = {t.node for t in taps}
        self.seen: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        if n in self.wanted:
            self.seen[n] = value
        return value

    def run_taps(self, *inputs: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        """(the graph's output, the value of each tap in order) on `inputs`."""
        self.seen = {}
        out = self.run(*inputs)
        return out, [self.seen[t.node] for t in self.taps]


def _printed_lines(graph: Graph) -> dict[str, str]:
    """``"%3"`` -> its printed line, for every node line of ``print(graph)``."""
    out = {}
    for line in print_graph(graph).splitlines():
        head, sep, _ = line.strip().partition(" = ")
        if sep and head.startswith("%"):
            out[head] = line.strip()
    return out


def _unknown(what: str, role: str, name: str, shown: dict[str, str], count: int) -> str:
    """The message for an unknown tap: the computed values there are, and the printed lines of the nearest names."""
    close = difflib.get_close_matches(f"%{name}" if name.isdigit() else name, list(shown), n=5, cutoff=0.5)
    near = "; near names:\n    " + "\n    ".join(shown[c] for c in close) if close else ""
    span = f"%0..%{count - 1}" if count else "none"
    return (
        f"{what}: tap {name!r} is not a node of the {role} graph (its computed values are {span}; "
        f"print(graph) lists them){near}"
    )
