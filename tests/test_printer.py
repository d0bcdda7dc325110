"""The stable printed IR: golden text, stability under renaming, rounded floats."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import fxpress
from fxpress.ir.annotations import Annotation, annotate
from fxpress.ir.printer import locate, print_graph


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3, bias=False)
        self.register_buffer("scale", torch.full((3,), 2.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x) * self.scale
        return torch.relu(y) * 0.333333333, y.sum(1, keepdim=True)


TINY = """\
graph(%x: f32[2,4]) {
  %fc.weight = param f32[3,4]
  %scale = param f32[3]
  %0 = aten.linear(%x, %fc.weight) : f32[2,3]
  %1 = aten.mul.Tensor(%0, %scale) : f32[2,3]
  %2 = aten.relu(%1) : f32[2,3]
  %3 = aten.mul.Tensor(%2, 0.3333) : f32[2,3]
  %4 = aten.sum.dim_IntList(%1, [1], true) : f32[2,1]
  return %3, %4
}"""


def test_golden_text():
    graph = fxpress.capture(Tiny(), (torch.randn(2, 4),))
    assert str(graph) == TINY
    assert print_graph(graph) == TINY


class TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1).clamp(min=-1.5e-7, max=123456.0)


def test_symbolic_sizes_renamed_in_order_and_floats_rounded():
    n, m = torch.export.Dim("n"), torch.export.Dim("m")
    graph = fxpress.capture(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 3)), dynamic_shapes=({0: n}, {0: n, 1: m}))
    assert str(graph) == (
        "graph(%a: f32[s0,4], %b: f32[s0,s1]) {\n"
        "  %0 = aten.cat([%a, %b], 1) : f32[s0,s1 + 4]\n"
        "  %1 = aten.clamp(%0, -1.5e-07, 1.235e+05) : f32[s0,s1 + 4]\n"
        "  return %1\n"
        "}"
    )


def test_two_captures_print_identically(cnn, cnn_input):
    batch = torch.export.Dim("batch")
    first = fxpress.capture(cnn, (cnn_input,), dynamic_shapes=({0: batch},))
    second = fxpress.capture(cnn, (torch.randn(5, 3, 8, 8),), dynamic_shapes=({0: batch},))
    assert str(first) == str(second)
    assert str(first) == str(first.copy())
    assert str(first) == str(first)  # printing has no side effects


def test_internal_node_names_do_not_leak(cnn, cnn_input):
    graph = fxpress.capture(cnn, (cnn_input,))
    renamed = graph.copy()
    for node in list(renamed.nodes("call_function")):
        node._rename(f"zz_{node.name}_tmp")
    renamed.recompile()
    assert {n.name for n in renamed.nodes("call_function")} != {n.name for n in graph.nodes("call_function")}
    assert str(renamed) == str(graph)


def test_values_are_renumbered_after_a_node_is_removed(cnn, cnn_input):
    graph = fxpress.optimize(fxpress.capture(cnn, (cnn_input,)), "fold-bn")
    text = str(graph)
    numbers = [int(line.split()[0][1:]) for line in text.splitlines() if line.startswith("  %") and " = aten." in line]
    assert numbers == list(range(len(numbers))) == [0, 1, 2, 3]
    assert "batch_norm" not in text
    assert "  %1 = aten.relu(%0) : f32[2,8,8,8]" in text


@dataclass(frozen=True)
class Note(Annotation):
    key = "note"
    value: float = 0.0

    def text(self) -> str:
        return f"note({self.value:.4g})"


def test_annotations_print_after_hash():
    graph = fxpress.capture(Tiny(), (torch.randn(2, 4),))
    relu = next(n for n in graph.nodes("call_function") if n.target == torch.ops.aten.relu.default)
    annotate(relu, Note(1 / 3))
    assert "  %2 = aten.relu(%1) : f32[2,3]  # note(0.3333)\n" in str(graph)


def test_locate_underlines_the_node_and_points_at_the_source():
    graph = fxpress.capture(Tiny(), (torch.randn(2, 4),))
    relu = next(n for n in graph.nodes("call_function") if n.target == torch.ops.aten.relu.default)
    lines = locate(graph, relu).splitlines()
    assert lines[0] == "  %2 = aten.relu(%1) : f32[2,3]"
    assert lines[1] == "  " + "^" * len("%2 = aten.relu(%1) : f32[2,3]")
    assert lines[2].startswith(f"  from {__file__}:")
    assert "torch.relu(y) * 0.333333333" in lines[2]


class Scalars(nn.Module):
    def forward(self, x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2.0 + x * 0.123456789 - x * 1e-5 + x * -2.5e6, n * 2


def test_floats_rounded_to_four_digits_and_never_read_as_ints():
    graph = fxpress.capture(Scalars(), (torch.randn(2), torch.tensor([1, 2])))
    assert str(graph) == (
        "graph(%x: f32[2], %n: i64[2]) {\n"
        "  %0 = aten.mul.Tensor(%x, 2.0) : f32[2]\n"
        "  %1 = aten.mul.Tensor(%x, 0.1235) : f32[2]\n"
        "  %2 = aten.add.Tensor(%0, %1) : f32[2]\n"
        "  %3 = aten.mul.Tensor(%x, 1e-05) : f32[2]\n"
        "  %4 = aten.sub.Tensor(%2, %3) : f32[2]\n"
        "  %5 = aten.mul.Tensor(%x, -2.5e+06) : f32[2]\n"
        "  %6 = aten.add.Tensor(%4, %5) : f32[2]\n"
        "  %7 = aten.mul.Tensor(%n, 2) : i64[2]\n"
        "  return %6, %7\n"
        "}"
    )
