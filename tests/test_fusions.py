"""Lowering fusions: residual add into layer norm, softmax into its quantize, shared int8 input prologues.

Each is checked twice: the compiled numbers against eager PyTorch, and the
fused Relax module (the real lowering stages up to ``fuse-tir``), so a fusion
that silently stops applying fails here rather than only in a benchmark.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from conftest import runnable_preset

import fxpress
from fxpress.backends.tvm.compile import _import
from fxpress.backends.tvm.kernels import CPURowReduction
from fxpress.backends.tvm.lower import as_pass, lowering_stages
from fxpress.backends.tvm.targets import resolve_target
from fxpress.ir import ops

pytestmark = pytest.mark.tvm


def _fused(model: torch.nn.Module, *inputs: torch.Tensor, preset: str = "x86") -> tvm.IRModule:
    """The module after compile's own stages up to and including ``fuse-tir``."""
    spec = resolve_target(preset, num_threads=1)
    mod, _, _ = _import(fxpress.capture(model.eval(), inputs), spec)
    stages = lowering_stages(spec)
    upto = [name for name, _ in stages].index("fuse-tir") + 1
    return as_pass(stages[:upto])(mod)


def _called(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs `main` calls, in order."""
    return re.findall(r"R\.call_tir\((?:cls\.)?(\w+)", mod["main"].script())


def _compiled(model: torch.nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    compiled = fxpress.compile(fxpress.capture(model.eval(), inputs), target="x86", num_threads=1)
    return np.asarray(compiled(*[x.numpy() for x in inputs]))


class AddNorm(torch.nn.Module):
    def __init__(self, width: int, reuse: bool) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(width)
        self.reuse = reuse

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = x + y
        return self.ln(s) + s if self.reuse else self.ln(s)


@pytest.mark.parametrize("width", [384, 100])
def test_residual_add_fuses_into_layer_norm(width: int) -> None:
    torch.manual_seed(width)
    model = AddNorm(width, reuse=False)
    with torch.no_grad():
        model.ln.weight.uniform_(0.5, 1.5)
        model.ln.bias.uniform_(-0.5, 0.5)
    x, y = torch.randn(2, 9, width) * 3, torch.randn(2, 9, width) + 1
    with torch.no_grad():
        ref = model(x, y).numpy()
    assert np.abs(_compiled(model, x, y) - ref).max() < 2e-5
    mod = _fused(model, x, y)
    called = _called(mod)
    assert called == ["add_layer_norm"], called
    assert CPURowReduction().apply(mod["add_layer_norm"], resolve_target("x86").target, False) is not None


def test_add_read_elsewhere_is_not_fused() -> None:
    torch.manual_seed(1)
    model = AddNorm(64, reuse=True)
    x, y = torch.randn(3, 64), torch.randn(3, 64)
    with torch.no_grad():
        ref = model(x, y).numpy()
    assert np.abs(_compiled(model, x, y) - ref).max() < 2e-5
    assert "add_layer_norm" not in _called(_fused(model, x, y))


class SoftmaxQuantize(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.quantize(torch.softmax(x, dim=self.dim), 1.0 / 255.0, -128, -128, 127)


@pytest.mark.parametrize("dim", [-1, 1])
def test_softmax_then_quantize(dim: int) -> None:
    """Last axis: one fused function (a multiply per element); another axis: the plain pair. Both match eager."""
    torch.manual_seed(3)
    x = torch.randn(2, 4, 128, 128) * 4
    model = SoftmaxQuantize(dim)
    ref = model(x).numpy().astype(np.int32)
    out = _compiled(model, x).astype(np.int32)
    assert np.abs(out - ref).max() <= 1  # the exp is fast_exp's, and float rounding differs from eager's
    assert (out == ref).mean() > 0.999
    called = _called(_fused(model, x))
    if dim == -1:
        assert called == ["softmax_quantize"], called
    else:
        assert "softmax_quantize" not in called and any("softmax" in name for name in called), called


def test_int8_linears_sharing_an_input_prepare_it_once() -> None:
    """Q, K and V read one quantized activation: its uint8 shift is computed once (the ``cse`` stage)."""
    runnable_preset("x86-avx2")

    class QKV(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(5)
            for name in "qkv":
                w = torch.randint(-60, 60, (48, 64), generator=gen, dtype=torch.int8)
                self.register_buffer(f"w{name}", w)
            self.register_buffer("b", torch.zeros(48, dtype=torch.int32))
            self.register_buffer("m", torch.full((48,), 1 << 30, dtype=torch.int32))
            self.register_buffer("s", torch.full((48,), 12, dtype=torch.int32))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            q = ops.quantize(x, 0.05, 3, -128, 127)
            return tuple(ops.quantized_linear(q, 3, w, self.b, self.m, self.s, -2) for w in (self.wq, self.wk, self.wv))

    model = QKV()
    x = torch.randn(2, 10, 64) * 3
    refs = model(x)
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target="x86-avx2", num_threads=1)
    outs = compiled(x.numpy())
    for out, ref in zip(outs, refs, strict=True):
        np.testing.assert_array_equal(np.asarray(out), ref.numpy())
    called = _called(_fused(model, x, preset="x86-avx2"))
    shifts = [name for name in called if "shift_u8" in name]
    assert len(shifts) == 1 and "quantize" in shifts[0], called
    assert sum("quantized_linear" in name for name in called) == 3, called
