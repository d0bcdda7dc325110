"""fxpress's integer ops: the PyTorch references, and TVM kernels bit-exact with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runnable_preset

import fxpress
from fxpress.ir import ops


def _qparams(x: torch.Tensor) -> tuple[float, int]:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    return scale, round(-128 - lo / scale)


def test_requantize_params_are_accurate() -> None:
    real = torch.tensor([2.0**-32, 1e-6, 0.0123, 0.5, 0.9999999, 1.0, 3.7, 2.0**29])
    mult, shift = ops.requantize_params(real)
    assert mult.dtype == torch.int32 and shift.dtype == torch.int32
    assert bool(((mult >= 2**30) & (mult.to(torch.int64) < 2**31)).all())
    approx = mult.double() * torch.pow(2.0, -(31 + shift.double()))
    assert float(((approx - real.double()) / real.double()).abs().max()) < 2**-30
    for bad in (0.0, -1.0, 2.0**30, float("nan"), 2.0**-33):
        with pytest.raises(ValueError, match="requantization multiplier"):
            ops.requantize_params(torch.tensor([bad]))


def test_quantize_dequantize_reference() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.375, 1.0, 100.0])
    q = ops.quantize(x, 0.25, 3, -128, 127)
    # ties to even: 0.375 / 0.25 = 1.5 -> 2; saturation at 127
    assert q.tolist() == [-1, 1, 3, 4, 5, 7, 127]
    assert ops.dequantize(q, 0.25, 3).tolist() == [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 31.0]


def test_quantized_linear_reference_tracks_float() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 64)
    w = torch.randn(24, 64) * 0.1
    bias = torch.randn(24) * 0.1
    x_scale, x_zp = _qparams(x)
    w_scale = w.abs().amax(1) / 127.0
    wq = torch.round(w / w_scale[:, None]).to(torch.int8)
    xq = ops.quantize(x, x_scale, x_zp, -128, 127)
    ref = torch.nn.functional.linear(ops.dequantize(xq, x_scale, x_zp), wq.float() * w_scale[:, None], bias)
    out_scale, out_zp = _qparams(ref)
    bias_q = torch.round(bias / (x_scale * w_scale)).to(torch.int32)
    mult, shift = ops.requantize_params(x_scale * w_scale / out_scale)
    yq = ops.quantized_linear(xq, x_zp, wq, bias_q, mult, shift, out_zp)
    y = ops.dequantize(yq, out_scale, out_zp)
    assert float((y - ref).abs().max()) <= out_scale * 0.5 + 1e-6 + float(
        (bias - bias_q * x_scale * w_scale).abs().max()
    )


class QLinear(torch.nn.Module):
    """quantize -> quantized_linear -> dequantize, the shape fold-qdq produces."""

    def __init__(self, k: int, n: int, seed: int, x_zp: int = 5, out_zp: int = -3, gain: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(
            torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), requires_grad=False
        )
        self.bias = torch.nn.Parameter(
            torch.randint(-5000, 5000, (n,), generator=g, dtype=torch.int32), requires_grad=False
        )
        real = torch.rand(n, generator=g, dtype=torch.float64) * 0.002 * gain / max(1, k / 64) + 1e-5
        mult, shift = ops.requantize_params(real)
        self.mult = torch.nn.Parameter(mult, requires_grad=False)
        self.shift = torch.nn.Parameter(shift, requires_grad=False)
        self.x_zp, self.out_zp = x_zp, out_zp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xq = ops.quantize(x, 0.05, self.x_zp, -128, 127)
        yq = ops.quantized_linear(xq, self.x_zp, self.w, self.bias, self.mult, self.shift, self.out_zp)
        return yq, ops.dequantize(yq, 0.1, self.out_zp)


@pytest.mark.tvm
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 384, 1536), (7, 3, 10), (128, 384, 1536), (333, 1000, 10), (7, 1000, 1536), (333, 3, 1536)],
)
def test_quantized_linear_tvm_bit_exact(m: int, k: int, n: int, int8_path: str) -> None:
    model = QLinear(k, n, seed=m * 7 + k + n)
    x = torch.randn(m, k) * 3
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=int8_path, num_threads=1)
    yq, y = compiled(x.numpy())
    ref_q, ref = model(x)
    assert yq.dtype == np.int8
    np.testing.assert_array_equal(yq, ref_q.numpy())
    np.testing.assert_array_equal(y, ref.numpy())
    assert len(np.unique(yq)) > 10  # the test exercises a real range of outputs, not all-saturated


@pytest.mark.tvm
def test_quantized_linear_saturates_and_rounds_like_the_reference(int8_path: str) -> None:
    model = QLinear(64, 32, seed=1, x_zp=-128, out_zp=127, gain=400.0)  # large multipliers: heavy saturation
    x = torch.cat([torch.randn(6, 64) * 10, torch.full((1, 64), 1e6), torch.full((1, 64), -1e6)])
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=int8_path, num_threads=1)
    yq, _ = compiled(x.numpy())
    ref_q, _ = model(x)
    np.testing.assert_array_equal(yq, ref_q.numpy())
    assert (yq == 127).any() and (yq == -128).any()


@pytest.mark.tvm
@pytest.mark.parametrize("preset", ["x86-avx2", "x86-64"])
def test_int8_weights_are_packed_at_compile_time(preset: str) -> None:
    model = QLinear(383, 100, seed=3)
    graph = fxpress.capture(model, (torch.randn(4, 383),))
    compiled = fxpress.compile(graph, target=runnable_preset(preset), num_threads=1)
    shapes = {tuple(p.shape): str(p.dtype) for p in compiled.params}
    if preset == "x86-avx2":  # vpmaddwd layout: [N/8, K/2, 8, 2] int16, zero-padded
        assert shapes.get((13, 192, 8, 2)) == "int16", shapes
    else:  # generic layout: [N/P, K, P] int8
        assert any(len(s) == 3 and d == "int8" and s[1] == 383 for s, d in shapes.items()), shapes


@pytest.mark.tvm
def test_batched_activations_use_the_int8_gemm(int8_path: str) -> None:
    """[B, S, K] inputs (a transformer's linears) are flattened to rows, so the GEMM rule takes them.

    Before, the rule fused the leading loops and failed to tensorize, and a generic
    reduction schedule ran them several times slower (still exact).
    """
    model = QLinear(96, 48, seed=5)
    x = torch.randn(2, 7, 96) * 3
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=int8_path, num_threads=1)
    yq, _ = compiled(x.numpy())
    np.testing.assert_array_equal(yq, model(x)[0].numpy())
    if int8_path == "x86-avx2":
        asm = compiled.executable.mod.imports[0].inspect_source("asm")
        assert "vpmaddwd" in asm
