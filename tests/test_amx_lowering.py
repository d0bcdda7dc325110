"""The x86-amx preset end to end: int8 linears and convs on AMX tiles, bit-exact with eager, permission errors.

Built for the ``x86-amx`` preset everywhere (cross where the host lacks AMX:
the assembly is checked); run and compared with eager PyTorch only where the
host has AMX, else skipped naming the missing CPU flags.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch

import fxpress
from fxpress.backends.tvm.isa.x86_amx.int8 import worth_amx
from fxpress.ir import ops
from fxpress.models.resnet import resnet18
from fxpress.passes import Calibrate, FoldQDQ, Observe
from fxpress.runtime import amx
from fxpress.runtime.cpu import host_cpu_flags

pytestmark = pytest.mark.tvm
MISSING = [f for f in ("amx_tile", "amx_int8") if f not in host_cpu_flags()]


def _compile(graph: fxpress.Graph) -> fxpress.CompiledModule:
    return fxpress.compile(graph, target="x86-amx", cross=bool(MISSING), num_threads=1)


def _asm(compiled: fxpress.CompiledModule) -> str:
    return compiled.executable.mod.imports[0].inspect_source("asm")


def _run_or_skip() -> None:
    if MISSING:
        pytest.skip(f"built for cross use; this host lacks CPU flags {MISSING} to run it")


class QLinear(torch.nn.Module):
    """quantize -> quantized_linear (full-range int8 weights, per-channel requantization) and its float-out form."""

    def __init__(self, k: int, n: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8))
        self.register_buffer("b", torch.randint(-9000, 9000, (n,), generator=g, dtype=torch.int32))
        self.register_buffer("m", torch.randint(1 << 29, 1 << 30, (n,), generator=g, dtype=torch.int32))
        self.register_buffer("s", torch.randint(9, 12, (n,), generator=g, dtype=torch.int32))
        self.register_buffer("scale", torch.rand(n, generator=g) * 1e-3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = ops.quantize(x, 0.05, 3, -128, 127)
        y = ops.quantized_linear(q, 3, self.w, self.b, self.m, self.s, -2)
        return y, ops.quantized_linear_float(q, 3, self.w, self.b, self.scale)


@pytest.mark.parametrize(("m", "k", "n"), [(128, 384, 1536), (77, 250, 70), (3, 4096, 200)])
def test_linear_runs_on_tiles_and_is_bit_exact(m: int, k: int, n: int) -> None:
    assert worth_amx(m, n, k)
    model = QLinear(k, n, seed=m + k + n)
    x = torch.randn(m, k) * 3
    compiled = _compile(fxpress.capture(model, (x,)))
    assert "tdpbusd" in _asm(compiled) and "ldtilecfg" in _asm(compiled)
    _run_or_skip()
    (yq, yf), (ref_q, ref_f) = compiled(x.numpy()), model(x)
    np.testing.assert_array_equal(yq, ref_q.numpy())
    np.testing.assert_array_equal(yf, ref_f.numpy())
    assert len(np.unique(yq)) > 50


def test_small_and_dynamic_layers_keep_the_vnni_kernels() -> None:
    model = QLinear(32, 16, seed=1)  # 16 x 32 x 16 multiply-adds per row: not worth the tiles
    x = torch.randn(4, 32)
    compiled = _compile(fxpress.capture(model, (x,)))
    asm = _asm(compiled)
    assert "tdpbusd" not in asm and "vpdpbusd" in asm
    _run_or_skip()
    np.testing.assert_array_equal(compiled(x.numpy())[0], model(x)[0].numpy())


def test_quantized_resnet_convs_run_on_tiles_bit_exact() -> None:
    """ResNet-18 int8 at 64x64: 3x3 and 1x1 convs on AMX (the 3-channel stem on VNNI), bit-exact end to end."""
    model = resnet18(seed=0)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    calib = [(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(s)),) for s in range(2, 5)]
    graph = fxpress.optimize(fxpress.capture(model, (x,)), "fold-bn")
    graph = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=calib), FoldQDQ()])
    compiled = _compile(graph)
    asm = _asm(compiled)
    assert asm.count("tdpbusd") >= 4
    _run_or_skip()
    np.testing.assert_array_equal(compiled(x.numpy()), graph(x).detach().numpy())


class QConv(torch.nn.Module):
    """An int8 conv right after the input (NCHW, read without a transpose), any channels, stride, dilation, padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: list[int], dilation: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(cin * cout + k)
        self.register_buffer("w", torch.randint(-128, 128, (cout, cin, k, k), generator=g, dtype=torch.int8))
        self.register_buffer("b", torch.randint(-9000, 9000, (cout,), generator=g, dtype=torch.int32))
        self.register_buffer("m", torch.randint(1 << 29, 1 << 30, (cout,), generator=g, dtype=torch.int32))
        self.register_buffer("s", torch.full((cout,), 12, dtype=torch.int32))
        self.attrs = ([stride, stride], padding, [dilation, dilation], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = ops.quantize(x, 0.05, -7, -128, 127)
        return ops.quantized_conv2d(q, -7, self.w, self.b, self.m, self.s, 5, *self.attrs)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "dilation"),
    [(18, 40, 3, 2, [1, 1, 1, 1], 1), (64, 64, 1, 1, [0, 0, 0, 0], 1), (32, 48, 3, 1, [2, 0, 1, 2], 2)],
)
def test_conv_on_tiles_any_channels_and_windows(
    cin: int, cout: int, k: int, stride: int, padding: list[int], dilation: int
) -> None:
    model = QConv(cin, cout, k, stride, padding, dilation)
    x = torch.randn(2, cin, 23, 21) * 3
    compiled = _compile(fxpress.capture(model, (x,)))
    assert "tdpbusd" in _asm(compiled)
    _run_or_skip()
    np.testing.assert_array_equal(compiled(x.numpy()), model(x).numpy())


def test_refused_tile_permission_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _run_or_skip()  # a cross build never asks for permission
    monkeypatch.setattr(amx, "_granted", False)
    monkeypatch.setattr(amx, "_arch_prctl", lambda code, arg: (-1, errno.EPERM))
    model = QLinear(128, 128, seed=2)
    with pytest.raises(amx.AMXPermissionError, match="EPERM"):
        fxpress.compile(fxpress.capture(model, (torch.randn(64, 128),)), target="x86-amx", num_threads=1)


class DynamicLinear(torch.nn.Module):
    """``dynamic_quantized_linear``: rows quantized to uint8 at run time, int8 weights, float out."""

    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(k + n)
        self.register_buffer("w", torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8))
        self.register_buffer("scale", torch.rand(n, generator=g) * 1e-2)
        self.register_buffer("bias", torch.randn(n, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dynamic_quantized_linear(x, self.w, self.scale, self.bias)


def test_dynamic_linear_runs_on_tiles() -> None:
    model = DynamicLinear(1536, 384)  # all-MiniLM-L6-v2's FFN down-projection at sequence 128
    x = torch.randn(1, 128, 1536) * 2
    compiled = _compile(fxpress.capture(model, (x,)))
    assert "tdpbusd" in _asm(compiled)
    _run_or_skip()
    want = model(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
