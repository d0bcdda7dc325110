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

**int8** (`fold-qdq` measures the pattern again on the int8 weight it makes):
``fxpress::quantized_linear`` / ``quantized_linear_float`` whose int8 weight
is annotated with R-row blocks become ``block_sparse_quantized_linear`` /
``..._float`` (sparse_ops.py), stored as R x 1 blocks (each R x C block is C
columns; the rows padded to a multiple of 4 columns: the kernel takes kept
columns in quads), when the target's ISA has an int8 block-sparse kernel for
R-row blocks (``spec.isa.int8_lowering(target).sparse_int8(R)``: VNNI's
``vpdpbusd``, kernels/bsr_int8.py), the rows are static and the padded
column density is at most the ISA's measured threshold (its own dense int8
kernel is the one to beat: AMX tiles on AMX CPUs). The converter folds the
``x + 128`` of the u8s8 form into the bias at compile time (lifted) and lays
the blocks out as ``[nb, L/4, R, 4]`` quads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tvm import relax, tirx

from fxpress.backends.tvm.isa.base import SparseInt8
from fxpress.backends.tvm.kernels.base import vector_lanes
from fxpress.backends.tvm.kernels.bsr import bsr_linear_func
from fxpress.backends.tvm.kernels.bsr_int8 import QUAD, bsr_int8_func
from fxpress.backends.tvm.targets import TargetSpec
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.sparse_ops import (
    block_sparse_linear,
    block_sparse_quantized_linear,
    block_sparse_quantized_linear_float,
)

MAX_DENSITY = 0.5
_LINEAR = torch.ops.aten.linear.default
# the folded int8 linears (fxpress/ir/ops.py) -> their block-sparse forms (sparse_ops.py)
_INT8 = {
    torch.ops.fxpress.quantized_linear.default: block_sparse_quantized_linear._opoverload,
    torch.ops.fxpress.quantized_linear_float.default: block_sparse_quantized_linear_float._opoverload,
}


def to_block_ell(
    weight: torch.Tensor, block: tuple[int, int], multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(data[nb, L, C, R], cols[nb, L], counts[nb])``: the nonzero R x C blocks of `weight`, rows padded to L.

    L is the longest row's count rounded up to a multiple of `multiple` (at least one block).
    """
    r, c = block
    n, k = weight.shape
    blocks = weight.detach().reshape(n // r, r, k // c, c).permute(0, 2, 3, 1)  # [nb, K/C, C, R]
    kept = blocks.reshape(n // r, k // c, -1).ne(0).any(dim=-1)  # [nb, K/C]
    width = max(-(-int(kept.sum(dim=1).max()) // multiple) * multiple, multiple)
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


def _int8_candidate(node: Any, spec: TargetSpec) -> tuple[Any, tuple[int, int], SparseInt8 | str] | None:
    """A folded int8 linear with a block-annotated weight: its weight node, block, and the ISA's kernel (or why not)."""
    if node.op != "call_function" or node.target not in _INT8:
        return None
    weight = node.args[2]
    info = notes.get(weight, "sparsity") if getattr(weight, "op", None) == "get_attr" else None
    block = tuple(int(b) for b in getattr(info, "block", ()))
    if len(block) != 2 or block[0] == 1:
        return (
            None  # unstructured or N:M: no kernel (the dense int8 GEMM is at least as fast on x86; bench/sparsity.md)
        )
    kernel = spec.isa.int8_lowering(spec.target).sparse_int8(block[0])
    if kernel is None:
        return weight, block, f"{spec.isa.name} has no int8 block-sparse kernel for {block[0]}-row blocks"
    x = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
    if x is None or any(not isinstance(d, int) for d in x.shape):
        return weight, block, "rows not static (the int8 block-sparse kernel needs them)"
    return weight, block, kernel


def _lower_int8(graph: Graph, out: Graph, node: Any, found: tuple[Any, tuple[int, int], SparseInt8 | str]) -> dict:
    """Rewrite one int8 linear in `out` into its block-sparse form if worth it; the decision."""
    weight_node, block, kernel = found
    decision: dict[str, Any] = {"layer": node.name, "block": list(block), "int8": True}
    if isinstance(kernel, str):
        return {**decision, "sparse": False, "reason": kernel}
    weight = graph.param(weight_node.target)
    data, cols, counts = to_block_ell(weight, (block[0], 1), multiple=QUAD)
    density = cols.shape[1] / weight.shape[1]
    sparse = density <= kernel.max_density
    decision.update(padded_density=round(density, 4), sparse=sparse, kernel=kernel.intrinsic)
    if not sparse:
        return decision
    target = {n.name: n for n in out.fx.nodes}[node.name]
    x, x_zp, w, *rest = target.args
    hint = str(w.target)
    d = out.add_param(f"{hint}_bsr_data", data, before=target)
    k = out.add_param(f"{hint}_bsr_cols", cols, before=target)
    c = out.add_param(f"{hint}_bsr_counts", counts, before=target)
    with out.fx.inserting_before(target):
        new = out.fx.call_function(_INT8[target.target], (x, x_zp, d, k, c, *rest))
    new.meta = dict(target.meta)
    target.replace_all_uses_with(new)
    out.fx.erase_node(target)
    return decision


def lower_block_sparse(graph: Graph, spec: TargetSpec) -> tuple[Graph, list[dict[str, Any]]]:
    """A copy of `graph` with worthwhile annotated linear layers block-sparse, and what was decided per layer."""
    if spec.device != "cpu":
        return graph, []
    lanes = vector_lanes(spec.target)
    found = [(node, *c) for node in graph.fx.nodes if (c := _candidate(node, lanes)) is not None]
    int8 = [(node, i8) for node in graph.fx.nodes if (i8 := _int8_candidate(node, spec)) is not None]
    if not found and not int8:
        return graph, []
    out = graph.copy()
    by_name = {n.name: n for n in out.fx.nodes}
    decisions = [_lower_int8(graph, out, node, i8) for node, i8 in int8]
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


def _narrow(constants: Any, node: Any, weight_arg: int, bias_arg: int, shift_arg: int | None) -> bool:
    """`node`'s ``acc + bias`` fits int32 (and every total shift is >= 32): proven on its constant operands.

    As convert_map's `narrow`, for the block-ELL weight (its zero padding adds nothing).
    """
    names = [getattr(node.args[i], "name", None) for i in (weight_arg, bias_arg, shift_arg) if i is not None]
    values = [constants.get(n) if constants and n else None for n in names]
    if any(v is None for v in values):
        return False
    data, bias, *shift = (torch.as_tensor(v).to(torch.int64) for v in values)
    reach = 255 * int(data.abs().sum(dim=(1, 2)).max())  # [nb, L, C, R] -> per output row sum |w|
    return (not shift or int(shift[0].min()) >= 1) and int(bias.abs().max()) + 2 * reach < (1 << 31)


def convert_block_sparse_quantized_linear(spec: TargetSpec, constants: Any = None, float_out: bool = False) -> Any:
    """The converter of ``block_sparse_quantized_linear.default`` (``..._float`` with `float_out`) for `spec`.

    Only graphs `lower_block_sparse` rewrote for this ISA reach it: static rows, R x 1 blocks, L % 4 == 0.
    """
    lowering = spec.isa.int8_lowering(spec.target)

    def convert(node: Any, importer: Any) -> relax.Expr:
        args = importer.retrieve_args(node)
        x, x_zp, data, cols, counts, bias, *params = args
        bb = importer.block_builder
        *lead, k = x.ty.shape.values
        nb, width, c, r = (int(v) for v in data.ty.shape.values)
        kernel = lowering.sparse_int8(r)
        if kernel is None or c != 1 or width % QUAD:
            raise ValueError(f"block_sparse_quantized_linear: no int8 kernel for {r}x{c} blocks of width {width}")
        narrow = _narrow(constants, node, 2, 5, None if float_out else 7)
        flat = bb.emit(relax.op.reshape(x, (-1, k)))
        rows = int(flat.ty.shape.values[0])
        # [nb, L, 1, R] -> [nb, L/4, R, 4]: each quad's R x 4 weights, one vector (lifted: runs at compile time)
        quads = bb.emit(relax.op.permute_dims(relax.op.reshape(data, (nb, width // QUAD, QUAD, r)), [0, 1, 3, 2]))
        # u8s8: bias - (128 + x_zp) * colsum(W) undoes the kernel's x + 128 (lifted)
        colsum = relax.op.reshape(relax.op.sum(relax.op.astype(data, "int64"), axis=[1, 2]), (nb * r,))
        shifted = relax.op.subtract(
            relax.op.astype(bias, "int64"), relax.op.multiply(colsum, relax.const(128 + int(x_zp), "int64"))
        )
        bias_u = bb.emit(relax.op.astype(shifted, "int32") if narrow else shifted)
        requant = {"narrow": narrow, "float": float_out, "out_zero_point": 0 if float_out else int(params[2])}
        func = bsr_int8_func(rows, int(k), nb, r, width, requant, kernel.intrinsic, kernel.lanes)
        gv = bb.add_func(func, "block_sparse_quantized_linear")
        extra = params[:1] if float_out else params[:2]
        dtype = "float32" if float_out else "int8"
        y = bb.emit(
            relax.call_tir(gv, [flat, quads, cols, counts, bias_u, *extra], relax.TensorType((rows, nb * r), dtype))
        )
        return bb.emit(relax.op.reshape(y, (*lead, nb * r)))

    return convert
