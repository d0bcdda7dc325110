"""dce: golden IR, exact numerics, and the graphs it must leave alone."""

from __future__ import annotations

import torch
from torch import nn

import fxpress
from fxpress.passes import DeadCodeElimination

aten = torch.ops.aten


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.aux = nn.Sequential(nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + self.aux(x)


def _orphan_aux_head(graph: fxpress.Graph) -> fxpress.Graph:
    """Drop the final add, as a pass that rewrites it away would: the aux head is now dead."""
    add = next(n for n in graph.nodes("call_function") if n.target == aten.add.Tensor)
    add.replace_all_uses_with(add.args[0])
    graph.fx.erase_node(add)
    graph.recompile()
    return graph


BEFORE = """\
graph(%x: f32[2,4]) {
  %aux.0.bias = param f32[3]
  %aux.0.weight = param f32[3,4]
  %fc.bias = param f32[3]
  %fc.weight = param f32[3,4]
  %0 = aten.linear(%x, %fc.weight, %fc.bias) : f32[2,3]
  %1 = aten.relu(%0) : f32[2,3]
  %2 = aten.linear(%x, %aux.0.weight, %aux.0.bias) : f32[2,3]
  return %1
}"""

AFTER = """\
graph(%x: f32[2,4]) {
  %fc.bias = param f32[3]
  %fc.weight = param f32[3,4]
  %0 = aten.linear(%x, %fc.weight, %fc.bias) : f32[2,3]
  %1 = aten.relu(%0) : f32[2,3]
  return %1
}"""


def test_golden_ir():
    graph = _orphan_aux_head(fxpress.capture(TwoHeads(), (torch.randn(2, 4),)))
    assert str(graph) == BEFORE
    out = fxpress.optimize(graph, "dce")
    assert str(out) == AFTER
    record = out.trace[-1]
    assert record.modified is True
    # the linear and its two get_attr nodes; 15 floats of aux parameters
    assert record.stats == {"removed_nodes": 3, "freed_bytes": 15 * 4}
    assert (record.nodes_before, record.nodes_after) == (3, 2)
    assert (record.param_bytes_before, record.param_bytes_after) == (30 * 4, 15 * 4)
    # the parameters are deleted from the module, and the emptied submodule with them
    assert not hasattr(out.gm, "aux")
    assert {name for name, _ in out.gm.named_parameters()} == {"fc.weight", "fc.bias"}


def test_numerics_exact():
    model = TwoHeads().eval()
    x = torch.randn(2, 4)
    graph = _orphan_aux_head(fxpress.capture(model, (x,)))
    out = fxpress.optimize(graph, DeadCodeElimination())
    for inp in (x, torch.randn(2, 4)):
        expected = torch.relu(model.fc(inp))
        torch.testing.assert_close(out(inp), expected, rtol=0, atol=0)
        torch.testing.assert_close(out(inp), graph(inp), rtol=0, atol=0)


def test_unused_buffer_is_dropped(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    assert "%bn.num_batches_tracked = param i64[]" in str(graph)  # exported, never read
    out = fxpress.optimize(graph, "dce")
    assert "num_batches_tracked" not in str(out)
    assert out.trace[-1].stats == {"removed_nodes": 1, "freed_bytes": 8}
    assert str(out) == str(graph).replace("  %bn.num_batches_tracked = param i64[]\n", "")
    torch.testing.assert_close(out(mlp_input), mlp(mlp_input), rtol=0, atol=1e-6)


def test_keeps_impure_operations():
    graph = fxpress.capture(nn.Linear(4, 3), (torch.randn(2, 4),))
    linear = next(graph.nodes("call_function"))
    x = graph.inputs[0]
    with graph.fx.inserting_after(linear):
        graph.fx.call_function(aten.add_.Tensor, (x, 1.0))  # mutates: must stay
        graph.fx.call_function(aten.mul.Tensor, (x, 2.0))  # pure and unused: goes
    graph.recompile()
    out = fxpress.optimize(graph, "dce")
    text = str(out)
    assert "aten.add_.Tensor(%input_1, 1.0)" in text
    assert "aten.mul.Tensor" not in text
    assert out.trace[-1].stats == {"removed_nodes": 1, "freed_bytes": 0}


def test_leaves_a_clean_graph_alone(cnn, cnn_input):
    graph = fxpress.optimize(fxpress.capture(cnn, (cnn_input,)), "fold-bn")
    out = fxpress.optimize(graph, "dce")
    assert out.trace[-1].modified is False
    assert out.trace[-1].stats == {"removed_nodes": 0, "freed_bytes": 0}
    assert str(out) == str(graph)
    torch.testing.assert_close(out(cnn_input), graph(cnn_input), rtol=0, atol=0)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_tied_weights_free_nothing_while_used():
    model = Tied().eval()
    x = torch.randn(2, 4)
    graph = fxpress.capture(model, (x,))
    assert "%a.weight = param" in str(graph)  # an alias of b.weight that no node reads
    out = fxpress.optimize(graph, "dce")
    assert "%a.weight" not in str(out)
    record = out.trace[-1]
    assert record.stats == {"removed_nodes": 1, "freed_bytes": 0}  # the tensor lives on as b.weight
    assert record.param_bytes_before == record.param_bytes_after == 64
    torch.testing.assert_close(out(x), model(x), rtol=0, atol=0)
    assert fxpress.optimize(out, "dce").trace[-1].modified is False
