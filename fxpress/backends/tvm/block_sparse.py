"""Block-sparse linear layers in the TVM backend: which layers, the rewrite, and the converter.

``annotate-sparsity`` records on each weight the block pattern it measured
(a `Sparsity` annotation: block R x C, block density). Before export the
backend rewrites ``aten.linear`` layers whose weight is worth it into
``fxpress::block_sparse_linear`` (fxpress/ir/sparse_ops.py) with the kept
blocks in block-ELL form, and the converter lowers that op to fxpress's BSR
kernel (kernels/bsr.py). A layer stays dense when

- its block's rows are not whole vectors (the kernel would run scalar): R a
  multiple of the register's lanes, or on AVX-512 of 8 (an 8-row block runs
  on 8-lane vectors, `block_lanes`), or
- its *padded* density (the ELL width over the blocks per row) is above
  `MAX_DENSITY`: measured on this machine (tools/bench), the sparse kernel
  runs at about 70 % of the dense GEMM's rate per multiply-add, so below half
  density it is clearly faster and above it may not be.

Only CPU targets rewrite; the annotation is left on the graph either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tvm import relax, tirx

from fxpress.backends.tvm.kernels.base import vector_lanes
from fxpress.backends.tvm.kernels.bsr import bsr_linear_func
from fxpress.backends.tvm.targets import TargetSpec
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.sparse_ops import block_sparse_linear

MAX_DENSITY = 0.5
_LINEAR = torch.ops.aten.linear.default


def to_block_ell(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(data[nb, L, C, R], cols[nb, L], counts[nb])``: the nonzero R x C blocks of `weight`, rows padded to L."""
    r, c = block
    n, k = weight.shape
    blocks = weight.detach().reshape(n // r, r, k // c, c).permute(0, 2, 3, 1)  # [nb, K/C, C, R]
    kept = blocks.reshape(n // r, k // c, -1).ne(0).any(dim=-1)  # [nb, K/C]
    width = max(int(kept.sum(dim=1).max()), 1)
    cols = torch.zeros(n // r, width, dtype=torch.int32)
    data = weight.new_zeros(n // r, width, c, r)
    for i in range(n // r):
        (js,) = torch.nonzero(kept[i], as_tuple=True)
        cols[i, : len(js)] = js.to(torch.int32)
        data[i, : len(js)] = blocks[i, js]
    return data.contiguous(), cols, kept.sum(dim=1).to(torch.int32)


def block_lanes(rows: int, lanes: int) -> int:
    """The vector width of the BSR kernel for R-row blocks on a `lanes`-wide CPU: 0 when R is not whole vectors.

    The register's width where it divides R; else 8 (an AVX-512 CPU runs an
    8-row block on its 8-lane ymm vectors, at the AVX2 kernel's rate).
    """
    if rows % lanes == 0:
        return lanes
    return 8 if lanes > 8 and rows % 8 == 0 else 0


def _candidate(node: Any, lanes: int) -> tuple[Any, tuple[int, int]] | None:
    """The weight node and block of a linear layer worth running block-sparse, else None."""
    if node.op != "call_function" or node.target is not _LINEAR:
        return None
    weight = node.args[1]
    if getattr(weight, "op", None) != "get_attr":
        return None
    info = notes.get(weight, "sparsity")
    block = tuple(getattr(info, "block", ())) if info is not None else ()
    if len(block) != 2 or not block_lanes(int(block[0]), lanes):
        return None
    return weight, (int(block[0]), int(block[1]))


def lower_block_sparse(graph: Graph, spec: TargetSpec) -> tuple[Graph, list[dict[str, Any]]]:
    """A copy of `graph` with worthwhile annotated linear layers block-sparse, and what was decided per layer."""
    if spec.device != "cpu":
        return graph, []
    lanes = vector_lanes(spec.target)
    found = [(node, *c) for node in graph.fx.nodes if (c := _candidate(node, lanes)) is not None]
    if not found:
        return graph, []
    out = graph.copy()
    by_name = {n.name: n for n in out.fx.nodes}
    decisions = []
    for node, weight_node, block in found:
        weight = graph.param(weight_node.target)
        if weight.dim() != 2 or weight.shape[0] % block[0] or weight.shape[1] % block[1]:
            continue
        data, cols, counts = to_block_ell(weight, block)
        density = cols.shape[1] * block[1] / weight.shape[1]
        sparse = density <= MAX_DENSITY
        decisions.append(
            {"layer": node.name, "block": list(block), "padded_density": round(density, 4), "sparse": sparse}
        )
        if not sparse:
            continue
        target = by_name[node.name]
        x, _, *rest = target.args
        bias = rest[0] if rest else None
        hint = str(weight_node.target)
        d = out.add_param(f"{hint}_bsr_data", data, before=target)
        k = out.add_param(f"{hint}_bsr_cols", cols, before=target)
        n = out.add_param(f"{hint}_bsr_counts", counts, before=target)
        with out.fx.inserting_before(target):
            new = out.fx.call_function(block_sparse_linear._opoverload, (x, d, k, n, bias))
        new.meta = dict(target.meta)
        target.replace_all_uses_with(new)
        out.fx.erase_node(target)
    out.drop_unused_params()
    out.gm.recompile()
    return out, decisions


def convert_block_sparse_linear(spec: TargetSpec) -> Any:
    """The converter of ``block_sparse_linear.default`` for `spec`."""
    lanes = vector_lanes(spec.target) if spec.device == "cpu" else 8

    def convert(node: Any, importer: Any) -> relax.Expr:
        x, data, cols, counts, bias = importer.retrieve_args(node)
        bb = importer.block_builder
        *lead, k = x.ty.shape.values
        nb, width, c, r = (int(v) for v in data.ty.shape.values)
        n = nb * r
        if bias is None:
            bias = relax.const(np.zeros(n, "float32"))
        flat = bb.emit(relax.op.reshape(x, (-1, k)))
        rows = flat.ty.shape.values[0]
        static = int(rows.value) if isinstance(rows, tirx.IntImm) else None
        func = bsr_linear_func(static, int(k), n, (r, c), width, block_lanes(r, lanes) or lanes)
        gv = bb.add_func(func, "block_sparse_linear")
        y = bb.emit(relax.call_tir(gv, [flat, data, cols, counts, bias], relax.TensorType((rows, nb, r), "float32")))
        return bb.emit(relax.op.reshape(y, (*lead, n)))

    return convert
