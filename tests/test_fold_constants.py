"""fold-constants: golden IR, exact numerics, growth limit, and graphs it must leave alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxpress
from fxpress.errors import PipelineError
from fxpress.passes import FoldConstants


class ScaledLinear(nn.Module):
    """A weight scaled per row in forward, plus a bias broadcast with expand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.register_buffer("scale", torch.rand(3, 1) + 0.5)
        self.b = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w * self.scale) + self.b.expand(2, 3)


BEFORE = """\
graph(%x: f32[2,4]) {
  %b = param f32[3]
  %scale = param f32[3,1]
  %w = param f32[3,4]
  %0 = aten.mul.Tensor(%w, %scale) : f32[3,4]
  %1 = aten.linear(%x, %0) : f32[2,3]
  %2 = aten.expand(%b, [2, 3]) : f32[2,3]
  %3 = aten.add.Tensor(%1, %2) : f32[2,3]
  return %3
}"""

# the product is folded; expand would double the bytes of %b (max-growth=1): kept
AFTER = """\
graph(%x: f32[2,4]) {
  %b = param f32[3]
  %mul_const = param f32[3,4]
  %0 = aten.linear(%x, %mul_const) : f32[2,3]
  %1 = aten.expand(%b, [2, 3]) : f32[2,3]
  %2 = aten.add.Tensor(%0, %1) : f32[2,3]
  return %2
}"""

AFTER_GROWTH_4 = """\
graph(%x: f32[2,4]) {
  %expand_const = param f32[2,3]
  %mul_const = param f32[3,4]
  %0 = aten.linear(%x, %mul_const) : f32[2,3]
  %1 = aten.add.Tensor(%0, %expand_const) : f32[2,3]
  return %1
}"""


@pytest.fixture
def scaled() -> ScaledLinear:
    return ScaledLinear().eval()


def test_golden_ir(scaled):
    graph = fxpress.capture(scaled, (torch.randn(2, 4),))
    assert str(graph) == BEFORE
    out = fxpress.optimize(graph, "fold-constants")
    assert str(out) == AFTER
    record = out.trace[-1]
    assert record.modified is True and record.stats == {"folded": 1}
    assert (record.param_bytes_before, record.param_bytes_after) == (18 * 4, 15 * 4)


def test_growth_limit_is_an_option(scaled):
    graph = fxpress.capture(scaled, (torch.randn(2, 4),))
    out = fxpress.optimize(graph, "fold-constants{max-growth=4}")
    assert str(out) == AFTER_GROWTH_4
    assert out.trace[-1].stats == {"folded": 2}
    assert out.pipeline == "fold-constants{max-growth=4.0}"
    with pytest.raises(PipelineError, match="max-growth must be > 0"):
        fxpress.optimize(graph, "fold-constants{max-growth=-1}")
    with pytest.raises(ValueError, match="max-growth must be > 0"):
        FoldConstants(max_growth=0)


@pytest.mark.parametrize("pipeline", ["fold-constants", "fold-constants{max-growth=4}"])
def test_numerics_exact(scaled, pipeline):
    x = torch.randn(2, 4)
    out = fxpress.optimize(fxpress.capture(scaled, (x,)), pipeline)
    for inp in (x, torch.randn(2, 4) * 10):
        torch.testing.assert_close(out(inp), scaled(inp), rtol=0, atol=0)


class Chain(nn.Module):
    """A chain of constant ops whose intermediate values are used by non-constant ops too."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.w.t() * 2.0
        b = torch.tanh(a) + 1.0
        return x @ a + x @ b


def test_chain_with_shared_constants():
    model = Chain().eval()
    x = torch.randn(3, 4)
    graph = fxpress.capture(model, (x,))
    out = fxpress.optimize(graph, "fold-constants")
    params = [line for line in str(out).splitlines() if " = param " in line]
    assert len(params) == 2  # `a` and `b`; the intermediates (t, tanh) are gone
    assert not any(n.target in (torch.ops.aten.t.default, torch.ops.aten.tanh.default) for n in out.nodes())
    assert "%w = param" not in str(out)
    # the folded values are exact; the matmul now reads a contiguous tensor instead of a
    # transposed view, so its float32 sums may round differently in the last bit
    torch.testing.assert_close(out(x), model(x), rtol=1e-6, atol=1e-6)


# -- leave alone ---------------------------------------------------------------


def test_leaves_input_dependent_graph_alone(mlp, mlp_input):
    graph = fxpress.capture(mlp, (mlp_input,))
    out = fxpress.optimize(graph, "fold-constants")
    assert out.trace[-1].modified is False and out.trace[-1].stats == {"folded": 0}
    assert str(out) == str(graph)
    torch.testing.assert_close(out(mlp_input), mlp(mlp_input), rtol=0, atol=0)


def test_leaves_random_ops_alone():
    class Noise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand(3)

    graph = fxpress.capture(Noise(), (torch.randn(2, 3),))
    out = fxpress.optimize(graph, "fold-constants")
    assert out.trace[-1].modified is False
    assert str(out) == str(graph)
    assert "aten.rand([3]" in str(out)
    x = torch.zeros(2, 3)
    assert not torch.equal(out(x), out(x))  # still drawn on every call
