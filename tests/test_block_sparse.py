"""Block-sparse linear layers in the TVM backend: block-ELL packing, the reference op, the BSR kernel.

The oracle is the dense layer in eager PyTorch with the same (zeroed) weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.backends.tvm.block_sparse import MAX_DENSITY, to_block_ell
from fxpress.ir import annotations as notes
from fxpress.ir.printer import print_graph
from fxpress.ir.sparse_ops import block_sparse_linear, dense_weight
from fxpress.sparse.annotations import Sparsity
from fxpress.sparse.pattern import parse_pattern

pytestmark = pytest.mark.tvm


def _block_sparse(out_f: int, in_f: int, block: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r, c = block
    w = torch.randn(out_f, in_f, generator=g)
    keep = torch.rand(out_f // r, in_f // c, generator=g) < density
    keep[0] = False  # one block row with no block at all: its outputs are the bias
    return w * keep.repeat_interleave(r, 0).repeat_interleave(c, 1)


def _annotated(model: nn.Module, x: torch.Tensor, block: tuple[int, int], dynamic: bool = False) -> fxpress.Graph:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    graph = fxpress.capture(model, (x,), dynamic_shapes=shapes)
    pattern = parse_pattern(f"{block[0]}x{block[1]}")
    for node in graph.nodes("get_attr"):
        weight = graph.param(node.target)
        if weight.dim() == 2:
            notes.annotate(node, Sparsity.of(weight, pattern))
    return graph


def _linear(in_f: int, out_f: int, block: tuple[int, int], density: float, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(_block_sparse(out_f, in_f, block, density))
    return layer.eval()


def test_block_ell_round_trip_is_exact():
    w = _block_sparse(48, 40, (16, 2), 0.3)
    data, cols, counts = to_block_ell(w, (16, 2))
    assert data.shape[:3] == (3, cols.shape[1], 2) and data.shape[3] == 16
    assert counts[0] == 0 and counts.max() == cols.shape[1]  # the empty block row, the longest one
    assert torch.equal(dense_weight(data, cols, 40), w)


def test_the_kernel_stops_each_row_at_its_own_block_count():
    from fxpress.backends.tvm.kernels.bsr import bsr_linear_func

    for rows, block in ((128, (16, 1)), (None, (8, 2))):  # static and dynamic rows
        text = bsr_linear_func(rows, 64, 32, block, width=5, lanes=8).script()
        assert f"T.grid(counts[i], {block[1]})" in text and f"T.grid(5, {block[1]})" not in text


def test_reference_op_is_the_dense_linear():
    w = _block_sparse(32, 24, (8, 1), 0.4)
    data, cols, counts = to_block_ell(w, (8, 1))
    x, b = torch.randn(3, 5, 24), torch.randn(32)
    torch.testing.assert_close(block_sparse_linear(x, data, cols, counts, b), nn.functional.linear(x, w, b))
    torch.testing.assert_close(block_sparse_linear(x, data, cols, counts, None), nn.functional.linear(x, w))


@pytest.mark.parametrize(
    ("rows", "in_f", "out_f", "block", "bias"),
    [
        (1, 3, 16, (16, 1), True),
        (7, 384, 48, (16, 1), True),
        (128, 1000, 32, (8, 1), False),
        (333, 64, 64, (16, 4), True),
        (5, 96, 1536, (8, 2), True),
    ],
)
def test_compiled_block_sparse_matches_eager(rows, in_f, out_f, block, bias):
    model = _linear(in_f, out_f, block, density=0.2, bias=bias)
    x = torch.randn(rows, in_f)
    compiled = fxpress.compile(_annotated(model, x, block))
    (decision,) = compiled.manifest["block_sparse"]
    assert decision["sparse"] and decision["block"] == list(block)
    np.testing.assert_allclose(compiled(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_dynamic_rows_and_leading_dims():
    model = nn.Sequential(_linear(100, 64, (16, 1), 0.25), nn.GELU(), _linear(64, 32, (16, 1), 0.25)).eval()
    compiled = fxpress.compile(_annotated(model, torch.randn(2, 5, 100), (16, 1), dynamic=True))
    assert [d["sparse"] for d in compiled.manifest["block_sparse"]] == [True, True]
    for batch in (1, 3, 7):
        x = torch.randn(batch, 5, 100)
        np.testing.assert_allclose(compiled(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_dense_enough_or_narrow_blocks_stay_dense():
    x = torch.randn(4, 64)
    dense_enough = _linear(64, 32, (16, 1), density=0.95)
    compiled = fxpress.compile(_annotated(dense_enough, x, (16, 1)))
    (decision,) = compiled.manifest["block_sparse"]
    assert decision["padded_density"] > MAX_DENSITY and not decision["sparse"]
    np.testing.assert_allclose(compiled(x.numpy()), dense_enough(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    narrow = _linear(64, 32, (1, 1), density=0.1)  # one output per block: a scalar kernel, not worth it
    compiled = fxpress.compile(_annotated(narrow, x, (1, 1)))
    assert compiled.manifest["block_sparse"] == []
    np.testing.assert_allclose(compiled(x.numpy()), narrow(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_compile_leaves_the_graph_alone():
    model = _linear(64, 32, (16, 1), 0.2)
    graph = _annotated(model, torch.randn(4, 64), (16, 1))
    before = print_graph(graph)
    fxpress.compile(graph)
    assert [n.target for n in graph.nodes("call_function")] == [torch.ops.aten.linear.default]
    assert print_graph(graph) == before


def test_sparsify_annotate_compile_pipeline():
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    x = torch.randn(16, 128)
    graph = fxpress.optimize(fxpress.capture(model, (x,)), "sparsify{density=0.1,pattern=16x1},annotate-sparsity")
    compiled = fxpress.compile(graph)
    assert [d["sparse"] for d in compiled.manifest["block_sparse"]] == [True, True]
    expected = graph.gm(x)
    np.testing.assert_allclose(compiled(x.numpy()), expected.detach().numpy(), rtol=1e-4, atol=1e-4)
