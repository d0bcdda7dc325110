"""fxpress's CPU schedule rules and lowering rewrites, against PyTorch on shape sweeps.

Each case compiles a tiny model through the whole TVM path and compares with
eager PyTorch (fp32: 1e-4 relative to the output scale). Separate checks make
sure the rules really apply to the functions they are meant for, so a rule
that silently falls back to TVM's naive loops fails a test instead of only
getting slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from conftest import runnable_preset
from tvm import relax

import fxpress
from fxpress.backends.tvm.compile import _import
from fxpress.backends.tvm.kernels import (
    CPUConv2d,
    CPUInjective,
    CPUInt8MatmulAVX2,
    CPUMatmul,
    CPURowReduction,
    CPUSeparablePool,
)
from fxpress.backends.tvm.kernels.matmul import _rows_per_tile, register_tile
from fxpress.backends.tvm.targets import resolve_target

pytestmark = pytest.mark.tvm


def _check(model: torch.nn.Module, *inputs: torch.Tensor, tol: float = 1e-4) -> None:
    model = model.eval()
    compiled = fxpress.compile(fxpress.capture(model, inputs), target="x86", num_threads=1)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    out = compiled(*[x.numpy() for x in inputs])
    scale = max(1.0, float(np.abs(ref).max()))
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= tol * scale


class Linear(torch.nn.Module):
    def __init__(self, k: int, n: int, act: bool) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(k, n)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.nn.functional.gelu(y) if self.act else y


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 384, 1536), (7, 3, 10), (128, 384, 1536), (333, 1000, 10), (7, 1000, 1536), (128, 3, 10), (333, 384, 1536)],
)
def test_dense_sweep(m: int, k: int, n: int) -> None:
    torch.manual_seed(m + k + n)
    _check(Linear(k, n, act=(m % 2 == 1)), torch.randn(m, k))


def test_dense_batched_input() -> None:
    _check(Linear(64, 48, act=True), torch.randn(2, 5, 64))


class Attention(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)  # Q·Kᵀ, softmax, P·V
        return scores @ v


@pytest.mark.parametrize("seq", [7, 128])
def test_batch_matmul_softmax(seq: int) -> None:
    torch.manual_seed(seq)
    q, k, v = (torch.randn(2, 4, seq, 32) for _ in range(3))
    _check(Attention(), q, k, v)


class ConvBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + residual)


@pytest.mark.parametrize(
    ("cin", "cout", "hw", "k", "stride", "groups", "batch"),
    [
        (3, 8, 9, 3, 1, 1, 1),  # width below one vector
        (16, 24, 28, 3, 1, 1, 1),  # width not a multiple of the tile
        (16, 32, 17, 3, 2, 1, 1),  # stride 2, odd size
        (32, 32, 14, 3, 1, 32, 1),  # depthwise
        (32, 64, 16, 3, 1, 4, 2),  # grouped, batch 2
        (8, 16, 12, 1, 1, 1, 1),  # 1x1
        (3, 16, 32, 7, 2, 1, 1),  # the ResNet stem shape
    ],
)
def test_conv2d_sweep(cin: int, cout: int, hw: int, k: int, stride: int, groups: int, batch: int) -> None:
    torch.manual_seed(cin * cout + hw)
    x = torch.randn(batch, cin, hw, hw)
    out_hw = (hw + 2 * (k // 2) - k) // stride + 1
    _check(ConvBlock(cin, cout, k, stride, groups), x, torch.randn(batch, cout, out_hw, out_hw))


@pytest.mark.parametrize("groups", [1, 24])
def test_conv_after_a_strided_conv_with_dynamic_height_and_width(groups: int) -> None:
    """Symbolic N, H, W: the conv rule must not take a conv whose tiles it cannot bound (it computed wrong values)."""
    torch.manual_seed(groups)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(24, 24, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(24, 24, 3, 1, 1, groups=groups)
    ).eval()
    batch, size = torch.export.Dim("batch", max=64), torch.export.Dim("size", min=4, max=256)
    x = torch.randn(2, 24, 8, 8)
    graph = fxpress.capture(model, (x,), dynamic_shapes=({0: batch, 2: size, 3: size},))
    compiled = fxpress.compile(graph, target="x86", num_threads=1)
    for n, hw in ((2, 8), (1, 13), (3, 20)):
        x = torch.randn(n, 24, hw, hw)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(compiled(x.numpy()), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_elementwise_and_layer_norm() -> None:
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = torch.nn.LayerNorm(384)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln(torch.tanh(x) * torch.exp(-x.abs()) + torch.erf(x)).transpose(0, 1)

    _check(M(), torch.randn(3, 50, 384) * 3)


def test_gelu_fast_math_accuracy_over_range() -> None:
    class Gelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(x)

    _check(Gelu(), torch.linspace(-12, 12, 4096).reshape(8, 512), tol=2e-6)


def test_rows_per_tile_divides_m() -> None:
    assert _rows_per_tile(128, 6) == 4
    assert _rows_per_tile(333, 6) == 3
    assert _rows_per_tile(1, 6) == 1
    assert _rows_per_tile(7, 6) == 6  # prime: a predicated tail rather than 1-row tiles


def _scheduled_functions(model: torch.nn.Module, *inputs: torch.Tensor, preset: str = "x86") -> dict[str, str]:
    """name -> which rule scheduled it, for every PrimFunc of the lowered module."""
    spec = resolve_target(preset, num_threads=1)
    mod, _, _ = _import(fxpress.capture(model.eval(), inputs), spec)
    t = relax.transform
    mod = tvm.transform.Sequential(
        [t.DecomposeOpsForInference(), t.LegalizeOps(), t.AnnotateTIROpPattern(), t.FuseOps(), t.FuseTIR()]
    )(mod)
    found = {}
    with spec.target:
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc) or "transform" in gv.name_hint:
                continue
            rules = (
                CPUInt8MatmulAVX2(),
                CPUMatmul(),
                CPUConv2d(),
                CPURowReduction(),
                CPUSeparablePool(),
                CPUInjective(),
            )
            for rule in rules:
                if rule.apply(func, spec.target, False) is not None:
                    found[gv.name_hint] = type(rule).__name__
                    break
    return found


def test_rules_apply_to_the_functions_they_target() -> None:
    found = _scheduled_functions(Linear(384, 1536, act=False), torch.randn(128, 384))
    assert any("matmul_packed" in name and rule == "CPUMatmul" for name, rule in found.items()), found
    found = _scheduled_functions(ConvBlock(16, 32, 3, 1, 1), torch.randn(1, 16, 28, 28), torch.randn(1, 32, 28, 28))
    assert "CPUConv2d" in found.values(), found


def test_row_and_pool_rules_apply() -> None:
    """Softmax and layer norm get the row rule (not dlight's scalar reduction), max-pool the separable one."""

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = torch.nn.LayerNorm(64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.ln(x), dim=-1)

    found = _scheduled_functions(M(), torch.randn(2, 16, 64))
    assert [n for n, r in found.items() if "layer_norm" in n and r == "CPURowReduction"], found
    assert [n for n, r in found.items() if "softmax" in n and r == "CPURowReduction"], found

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.max_pool2d(x, 3, 2, 1)

    found = _scheduled_functions(Pool(), torch.randn(1, 8, 32, 32))
    assert found.get("max_pool2d_separable") == "CPUSeparablePool", found


@pytest.mark.parametrize("length", [64, 100, 1536])  # vector partials; a row length no vector divides; dynamic's K
def test_row_rule_softmax_and_layer_norm(length: int) -> None:
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = torch.nn.LayerNorm(length)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.ln(x) * 4.0, dim=-1) + self.ln(x)

    torch.manual_seed(length)
    _check(M(), torch.randn(3, 7, length) * 5)


def test_int8_rule_applies_to_quantized_linear() -> None:
    from fxpress.ir import ops

    runnable_preset("x86-avx2")

    class Q(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(64, 96, dtype=torch.int8), requires_grad=False)
            self.b = torch.nn.Parameter(torch.zeros(64, dtype=torch.int32), requires_grad=False)
            self.m = torch.nn.Parameter(torch.full((64,), 1 << 30, dtype=torch.int32), requires_grad=False)
            self.s = torch.nn.Parameter(torch.full((64,), 8, dtype=torch.int32), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ops.quantized_linear(x, 0, self.w, self.b, self.m, self.s, 0)

    found = _scheduled_functions(Q(), torch.zeros(12, 96, dtype=torch.int8), preset="x86-avx2")
    assert any("quantized_linear" in name and rule == "CPUInt8MatmulAVX2" for name, rule in found.items()), found


def test_constant_weights_are_packed_at_compile_time() -> None:
    model = Linear(384, 100, act=False).eval()
    compiled = fxpress.compile(fxpress.capture(model, (torch.randn(4, 384),)), target="x86", num_threads=1)
    _, nr, lanes = register_tile(resolve_target("x86").target)
    panel = nr * lanes
    shapes = [tuple(p.shape) for p in compiled.params]
    assert (-(-100 // panel), 384, panel) in shapes, shapes  # [ceil(N/P), K, P], zero-padded


class ConvBN(torch.nn.Module):
    """conv + an *unfolded* eval BatchNorm: the epilogue has per-channel blocks of its own."""

    def __init__(self, k: int, groups: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, k, padding=k // 2, groups=groups)
        self.bn = torch.nn.BatchNorm2d(16)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.mark.parametrize(("k", "groups"), [(1, 1), (3, 1), (3, 4), (3, 16)])
def test_unfolded_batchnorm_epilogue(k: int, groups: int) -> None:
    # regression: blocks of the epilogue that do not read the kernel's output (sqrt(var + eps))
    # were moved into the tile loop and only partly computed (errors of 1e5)
    torch.manual_seed(k + groups)
    model = ConvBN(k, groups).eval()
    _check(model, torch.randn(2, 16, 8, 8))
    found = _scheduled_functions(model, torch.randn(2, 16, 8, 8))
    assert set(found.values()) & {"CPUConv2d", "CPUMatmul"}, found  # the kernel rule applied, no fallback
