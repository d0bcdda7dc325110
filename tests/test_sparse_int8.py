"""int8 block-sparse linears: the reference ops, fold-qdq keeping the pattern, and the VNNI kernel.

The oracle is the eager int8 graph (fxpress's integer reference ops), which the
compiled block-sparse kernel must match bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.backends.tvm.block_sparse import to_block_ell
from fxpress.ir import annotations as notes
from fxpress.ir import ops
from fxpress.ir.sparse_ops import block_sparse_quantized_linear, block_sparse_quantized_linear_float
from fxpress.passes import Calibrate
from fxpress.sparse.annotations import Sparsity
from tests.conftest import runnable_preset

pytestmark = pytest.mark.tvm


def _int8_weight(n: int, k: int, rows: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n // rows, k, generator=g) < density
    keep[1] = False  # a block row with no block: its outputs are the bias alone
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int32).to(torch.int8)
    return w * keep.repeat_interleave(rows, 0)


def test_reference_ops_are_the_dense_int8_ops():
    w = _int8_weight(48, 40, 16, 0.3)
    data, cols, counts = to_block_ell(w, (16, 1), multiple=4)
    assert cols.shape[1] % 4 == 0 and int(counts[1]) == 0
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (2, 3, 40), generator=g, dtype=torch.int32).to(torch.int8)
    bias = torch.randint(-1000, 1000, (48,), generator=g, dtype=torch.int32)
    mult, shift = ops.requantize_params(torch.full((48,), 0.003, dtype=torch.float64))
    expected = ops.quantized_linear(x, 5, w, bias, mult, shift, -3)
    assert torch.equal(block_sparse_quantized_linear(x, 5, data, cols, counts, bias, mult, shift, -3), expected)
    scale = torch.rand(48, generator=g)
    expected = ops.quantized_linear_float(x, 5, w, bias, scale)
    assert torch.equal(block_sparse_quantized_linear_float(x, 5, data, cols, counts, bias, scale), expected)


class _Mlp(nn.Module):
    """Two sparse linears: the first requantizes to int8 for the second (ReLU between), the second is float out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 128), nn.Linear(128, 96), nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@functools.cache
def _quantized(pattern: str = "16x1", density: float = 0.2, shape: tuple[int, ...] = (24, 64)) -> fxpress.Graph:
    """(Cached: compile never changes a graph.)"""
    torch.manual_seed(0)
    model = _Mlp().eval()
    batches = [(torch.randn(*shape),) for _ in range(3)]
    graph = fxpress.capture(model, batches[0])
    sparse = fxpress.optimize(graph, f"sparsify{{density={density},pattern={pattern},layers=fc1|fc2}}")
    return fxpress.optimize(sparse, ["observe{per-channel=true}", Calibrate(data=batches), "fold-qdq"])


def test_fold_qdq_measures_the_pattern_again_on_the_int8_weight():
    graph = _quantized()
    marked = {
        str(n.target): note for n in graph.nodes("get_attr") if isinstance(note := notes.get(n, Sparsity.key), Sparsity)
    }
    assert sorted(marked) == ["fc1_weight_i8", "fc2_weight_i8"]
    for target, note in marked.items():
        weight = graph.param(target)
        assert weight.dtype == torch.int8 and note.pattern == "16x1" and note.block == (16, 1)
        assert note.density <= 0.21  # 20 % of the blocks kept (to whole blocks); rounding to int8 only adds zeros


@pytest.mark.parametrize("preset", ["x86-vnni", "x86"])
def test_compiled_int8_block_sparse_is_bit_exact_and_uses_the_kernel(preset):
    graph = _quantized(density=0.05, shape=(3, 8, 64))  # leading dims: 24 rows; sparse enough to beat AMX too
    compiled = fxpress.compile(graph, target=runnable_preset(preset) if preset != "x86" else preset)
    decisions = {d["layer"]: d for d in compiled.manifest["block_sparse"]}
    assert len(decisions) == 2
    assert all(d["int8"] and d["sparse"] and d["kernel"] == "fx_vnni_sparse_vpdpbusd_16x4" for d in decisions.values())
    for seed in range(2):
        x = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(seed)) * 2
        assert np.array_equal(compiled(x.numpy()), graph(x).detach().numpy())
    asm = compiled.executable.mod.imports[0].inspect_source("asm") if preset == "x86-vnni" else ""
    assert preset != "x86-vnni" or "vpdpbusd" in asm


def test_isa_without_the_kernel_and_dense_layers_stay_dense():
    graph = _quantized()
    compiled = fxpress.compile(graph, target=runnable_preset("x86-avx2"))
    assert [d["sparse"] for d in compiled.manifest["block_sparse"]] == [False, False]
    assert "no int8 block-sparse kernel" in compiled.manifest["block_sparse"][0]["reason"]
    x = torch.randn(24, 64)
    assert np.array_equal(compiled(x.numpy()), graph(x).detach().numpy())
    dense = _quantized(density=0.9)
    compiled = fxpress.compile(dense, target=runnable_preset("x86-vnni"))
    assert all(not d["sparse"] and d["padded_density"] > 0.5 for d in compiled.manifest["block_sparse"])
    assert np.array_equal(compiled(x.numpy()), dense(x).detach().numpy())


def test_eight_row_blocks_take_the_ymm_kernel():
    graph = _quantized(pattern="8x1", density=0.25)
    compiled = fxpress.compile(graph, target=runnable_preset("x86-vnni"))
    assert [d["kernel"] for d in compiled.manifest["block_sparse"]] == ["fx_vnni_sparse_vpdpbusd_8x4"] * 2
    x = torch.randn(24, 64)
    assert np.array_equal(compiled(x.numpy()), graph(x).detach().numpy())


def test_the_isa_owns_the_choice():
    from fxpress.backends.tvm.targets import resolve_target

    vnni = resolve_target(runnable_preset("x86-vnni"))
    lowering = vnni.isa.int8_lowering(vnni.target)
    assert lowering.sparse_int8(32).lanes == 16 and lowering.sparse_int8(8).lanes == 8
    assert lowering.sparse_int8(4) is None
    off = dataclasses.replace(vnni.isa, u8s8=False)
    assert off.int8_lowering(vnni.target).sparse_int8(16) is None


def test_two_four_kernel_is_exact():
    """The 2:4 VNNI experiment (isa/x86_vnni/nm_bench.py, measured slower than dense): compressed form and kernel."""
    runnable_preset("x86-vnni")
    from fxpress.backends.tvm.isa.x86_vnni.nm_bench import bench, compress_2_4

    w = torch.tensor([[0, 3, 0, -2, 5, 0, 0, 0] * 2] * 16, dtype=torch.int8)  # the second group keeps one nonzero
    kept, select = compress_2_4(w)
    assert kept.shape == (1, 2, 16, 4) and kept[0, 0, 0].tolist() == [3, -2, 5, 0]
    assert select[0, 0, 0].tolist()[:3] == [1, 3, 4]  # positions in the 8-column window
    result = bench(8, 64, 32, repeat=1)  # raises unless both kernels equal torch's integer matmul
    assert result["exact"] and result["nm_2_4_ms"] > 0
