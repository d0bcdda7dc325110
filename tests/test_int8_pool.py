"""Max-pool in int8 (fold-qdq moves the quantize above it) and the separable max-pool lowering (te_pool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.passes import Calibrate, FoldQDQ, Observe

pytestmark = pytest.mark.tvm
fx_ops = torch.ops.fxpress


class Stem(nn.Module):
    """conv -> relu -> max-pool, the pool read by a conv and (optionally) by a float residual add."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 3, 2, 1)
        y = self.conv2(p)
        return y + p if self.residual else y


def _quantize(model: nn.Module, x: torch.Tensor, fold: FoldQDQ | None = None) -> fxpress.Graph:
    calib = [(torch.randn_like(x),) for _ in range(3)]
    return fxpress.optimize(fxpress.capture(model, (x,)), [Observe(), Calibrate(data=calib), fold or FoldQDQ()])


def _pools(graph: fxpress.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.fx.nodes if n.target == torch.ops.aten.max_pool2d.default]


@pytest.mark.parametrize("residual", [False, True])
def test_max_pool_runs_on_int8_and_the_tvm_build_matches(residual: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 17, 17)
    graph = _quantize(Stem(residual).eval(), x)
    (pool,) = _pools(graph)
    assert pool.args[0].target == fx_ops.quantize.default  # int8 in, int8 out: the conv reads it as is
    conv2 = next(n for n in graph.fx.nodes if "quantized_conv2d" in str(n.target) and n.args[0] is pool)
    users = {u.target for u in pool.users}
    assert users == ({conv2.target, fx_ops.dequantize.default} if residual else {conv2.target})
    ref = graph.gm(x)
    got = fxpress.compile(graph, target="x86")(x.numpy())
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)


def test_hoisting_the_quantize_is_exact() -> None:
    """q(maxpool(t)) == maxpool(q(t)): the int8 graph gives what the float pool between Q/DQ gave, bit for bit."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    model = Stem(residual=False).eval()
    torch.manual_seed(2)
    hoisted = _quantize(model, x)
    torch.manual_seed(2)
    plain = _quantize(model, x, FoldQDQ(cleanup=("cancel", "dedupe", "float-out")))  # every rule but hoist
    assert _pools(plain)[0].args[0].target != fx_ops.quantize.default
    assert torch.equal(hoisted.gm(x), plain.gm(x))


class Pool(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, **self.kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 2, "stride": 2},
        {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 2},
        {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)},
        {"kernel_size": 3, "stride": 2, "ceil_mode": True},  # the importer's own lowering
    ],
)
def test_separable_max_pool_equals_torch(kw: dict[str, object]) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 5, 15, 13) - 3.0  # mostly negative: a padded tap must never win
    model = Pool(**kw).eval()
    got = fxpress.compile(fxpress.capture(model, (x,)), target="x86")(x.numpy())
    np.testing.assert_array_equal(got, model(x).numpy())
