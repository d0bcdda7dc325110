"""The AVX2 u8s8 (vpmaddubsw) int8 kernels: chosen only where they cannot saturate, bit-exact where chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runnable_preset
from test_quant_conv import CONVS, QConvs
from test_quant_ops import QLinear

import fxpress
from fxpress.backends.tvm.kernels.int8_avx2 import u8s8_safe
from fxpress.passes import Calibrate, FoldQDQ, Observe

pytestmark = pytest.mark.tvm


AVX2 = "x86-avx2"  # the preset whose int8 lowering chooses between u8s8 and s16 per layer


@pytest.fixture(autouse=True)
def _needs_avx2() -> None:
    runnable_preset(AVX2)


def _seven_bit(model: torch.nn.Module) -> torch.nn.Module:
    """Clamp the test model's int8 weights (parameters named w*) to [-64, 64]: every pair is safe."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("w"):
                p.copy_(p.clamp(-64, 64))
    return model


def _asm(compiled: fxpress.CompiledModule) -> str:
    return compiled.executable.mod.imports[0].inspect_source("asm")


@pytest.mark.parametrize(
    ("pair", "safe"),
    [((64, 64), True), ((-64, -64), True), ((65, 64), False), ((-65, -64), False), ((127, -127), True),
     ((-128, 127), True), ((100, 29), False), ((100, 28), True)],
)  # fmt: skip
def test_safety_is_the_worst_case_of_each_neighbouring_pair(pair: tuple[int, int], safe: bool) -> None:
    """255 * (sum of a pair's positive or negative weights) must fit int16; pairs are input neighbours (2j, 2j+1)."""
    w = torch.zeros(3, 6, dtype=torch.int8)
    w[1, 2:4] = torch.tensor(pair, dtype=torch.int8)
    assert u8s8_safe(w) is safe
    shifted = torch.zeros(3, 6, dtype=torch.int8)  # the same values in different pairs never add up
    shifted[1, 1:3] = torch.tensor(pair, dtype=torch.int8)
    assert u8s8_safe(shifted)
    conv = torch.zeros(2, 5, 3, 3, dtype=torch.int8)  # conv weights pair input channels at one kernel position
    conv[0, 2:4, 1, 2] = torch.tensor(pair, dtype=torch.int8)
    assert u8s8_safe(conv) is safe


@pytest.mark.parametrize(
    ("m", "k", "n"), [(128, 384, 1536), (333, 1000, 10), (7, 383, 100), (12, 6, 24), (40, 1536, 384)]
)
def test_linear_takes_u8s8_and_is_bit_exact(m: int, k: int, n: int) -> None:
    model = _seven_bit(QLinear(k, n, seed=m + k + n))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=AVX2, num_threads=1)
    yq, y = compiled(x.numpy())
    ref_q, ref = model(x)
    np.testing.assert_array_equal(yq, ref_q.numpy())
    np.testing.assert_array_equal(y, ref.numpy())
    assert len(np.unique(yq)) > 10
    assert "vpmaddubsw" in _asm(compiled)
    # the weights travel as int8 panels [N/8, K/4, 8, 4], not widened to int16
    assert any(p.shape == ((n + 7) // 8, (k + 3) // 4, 8, 4) and str(p.dtype) == "int8" for p in compiled.params)


def test_unsafe_weights_take_the_exact_int16_kernel() -> None:
    model = _seven_bit(QLinear(64, 32, seed=2))
    with torch.no_grad():
        model.w[5, 10:12] = torch.tensor([100, 90], dtype=torch.int8)  # 255 * 190 overflows int16
    x = torch.randn(16, 64) * 3
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=AVX2, num_threads=1)
    np.testing.assert_array_equal(compiled(x.numpy())[0], model(x)[0].numpy())
    asm = _asm(compiled)
    assert "vpmaddubsw" not in asm and "vpmaddwd" in asm


@pytest.mark.parametrize("gain", [1.0, 400.0])
def test_u8s8_saturates_and_rounds_like_the_reference(gain: float) -> None:
    """Extreme zero points and inputs; gain 400 gives multipliers >= 0.5 (the int64 requantization, not the narrow one)."""
    model = _seven_bit(QLinear(64, 32, seed=1, x_zp=-128, out_zp=127, gain=gain))
    x = torch.cat([torch.randn(6, 64) * 10, torch.full((1, 64), 1e6), torch.full((1, 64), -1e6)])
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=AVX2, num_threads=1)
    yq, _ = compiled(x.numpy())
    np.testing.assert_array_equal(yq, model(x)[0].numpy())
    assert "vpmaddubsw" in _asm(compiled)


def test_conv_takes_u8s8_and_is_bit_exact() -> None:
    """Every case of `CONVS`: regular ones on vpmaddubsw (padding holds x_zp + 128), depthwise/grouped generic."""
    model = _seven_bit(QConvs(x_zp=-20))
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(2, CONVS[case][0], *CONVS[case][-1], generator=g) * 3 for case in sorted(CONVS)]
    compiled = fxpress.compile(fxpress.capture(model, tuple(xs)), target=AVX2, num_threads=1)
    got, want = compiled(*[x.numpy() for x in xs]), model(*xs)
    for i, case in enumerate(sorted(CONVS)):
        np.testing.assert_array_equal(got[2 * i], want[2 * i].numpy(), err_msg=case)
        assert len(np.unique(got[2 * i])) > 20, case
    assert "vpmaddubsw" in _asm(compiled)


def test_weight_reduce_range_gives_seven_bit_weights_that_take_u8s8() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 40)).eval()
    data = [(torch.randn(8, 96),) for _ in range(4)]
    graph = fxpress.capture(model, data[0])
    passes = [Observe(per_channel=True, weight_reduce_range=True), Calibrate(data=data), FoldQDQ()]
    q = fxpress.optimize(graph, passes)
    weights = [t for t in q.params().values() if t.dtype == torch.int8]
    assert len(weights) == 2 and all(int(w.min()) >= -64 and int(w.max()) <= 63 for w in weights)
    assert all(u8s8_safe(w) for w in weights)
    assert "weight-reduce-range=true" in q.pipeline
    compiled = fxpress.compile(q, target=AVX2, num_threads=1)
    x = torch.randn(8, 96)
    np.testing.assert_array_equal(compiled(x.numpy()), q(x).numpy())
    assert "vpmaddubsw" in _asm(compiled)


def _functions_with(ir: str, needle: str) -> list[str]:
    """The LLVM IR functions (``define`` .. closing brace) whose body contains `needle`."""
    return [f for f in ir.split("\ndefine ")[1:] if needle in f]


def test_gemm_and_conv_tiles_make_no_workspace_calls() -> None:
    """The register tile lives on the stack: no TVMBackendAllocWorkspace/Free per tile (which halved K=384 GEMMs)."""
    model = _seven_bit(QLinear(384, 384, seed=3))
    x = torch.randn(128, 384) * 3
    compiled = fxpress.compile(fxpress.capture(model, (x,)), target=AVX2, num_threads=1)
    ir = compiled.executable.mod.imports[0].inspect_source("ll")
    gemms = _functions_with(ir, "llvm.x86.avx2.pmadd.ub.sw")
    assert gemms and not any("TVMBackendAllocWorkspace" in f for f in gemms)
    convs = _seven_bit(QConvs(x_zp=-20))
    xs = [torch.randn(1, CONVS[case][0], *CONVS[case][-1]) * 3 for case in sorted(CONVS)]
    compiled = fxpress.compile(fxpress.capture(convs, tuple(xs)), target=AVX2, num_threads=1)
    kernels = _functions_with(compiled.executable.mod.imports[0].inspect_source("ll"), "llvm.x86.avx2.pmadd.ub.sw")
    assert kernels and not any("TVMBackendAllocWorkspace" in f for f in kernels)
