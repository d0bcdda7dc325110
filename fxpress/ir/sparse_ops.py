"""``fxpress::block_sparse_linear``: a linear layer whose weight is stored as kept R x C blocks.

    y = x @ W.T + bias,   W[n, k] given as block-ELL (see kernels/bsr.py):
        data[nb, L, C, R]  the kept blocks, each transposed
        cols[nb, L]        each block's column in units of C (padding blocks are zero)
        counts[nb]         how many of a block row's L blocks are real (the kernel stops there)

The TVM backend rewrites linear layers whose weights ``annotate-sparsity``
found block sparse into this op (backends/tvm/block_sparse.py) and lowers it
to fxpress's BSR kernel. The reference rebuilds the dense weight and calls
``torch.nn.functional.linear``, so a rewritten graph still runs in eager
PyTorch and exports; results agree with the dense layer up to float rounding
(the kernel adds the products in another order).

``fxpress::block_sparse_quantized_linear`` and its float-out form
``block_sparse_quantized_linear_float`` are ``quantized_linear`` and
``quantized_linear_float`` (fxpress/ir/ops.py: the integer conventions are
those) with the int8 weight in the same block-ELL form (``data`` int8). The
TVM backend rewrites folded int8 linears whose weight carries a block
`Sparsity` annotation into them (block_sparse.py) and lowers them to the int8
BSR kernel (kernels/bsr_int8.py); the references rebuild the int8 weight and
call the dense int8 references, so compiled results are bit-exact with them.
"""

from __future__ import annotations

import torch

import fxpress.ir.ops  # noqa: F401  (registers fxpress::quantized_linear, which the references call)

_LIB = "fxpress"


def dense_weight(data: torch.Tensor, cols: torch.Tensor, in_features: int) -> torch.Tensor:
    """The [nb * R, in_features] weight that block-ELL `data`/`cols` stand for."""
    nb, length, c, r = data.shape
    weight = data.new_zeros(nb, r, in_features // c, c)
    blocks = data.permute(0, 1, 3, 2)  # [nb, L, R, C]
    rows = torch.arange(nb, device=data.device)[:, None].expand(nb, length)
    flat = weight.permute(0, 2, 1, 3)  # a view [nb, K/C, R, C]
    # padding blocks are zero, so accumulating them onto column 0 changes nothing
    flat.index_put_((rows.reshape(-1), cols.reshape(-1).long()), blocks.reshape(-1, r, c), accumulate=True)
    return flat.permute(0, 2, 1, 3).reshape(nb * r, in_features)


@torch.library.custom_op(f"{_LIB}::block_sparse_linear", mutates_args=())
def block_sparse_linear(
    x: torch.Tensor, data: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return torch.nn.functional.linear(x, dense_weight(data, cols, x.shape[-1]), bias)


@block_sparse_linear.register_fake
def _(
    x: torch.Tensor, data: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    nb, _, _, r = data.shape
    return x.new_empty((*x.shape[:-1], nb * r))


@torch.library.custom_op(f"{_LIB}::block_sparse_quantized_linear", mutates_args=())
def block_sparse_quantized_linear(
    x: torch.Tensor,
    x_zero_point: int,
    data: torch.Tensor,
    cols: torch.Tensor,
    counts: torch.Tensor,
    bias: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    out_zero_point: int,
) -> torch.Tensor:
    """``quantized_linear`` (fxpress/ir/ops.py) with its int8 weight as block-ELL `data` / `cols` / `counts`."""
    weight = dense_weight(data, cols, x.shape[-1])
    return torch.ops.fxpress.quantized_linear(x, x_zero_point, weight, bias, multiplier, shift, out_zero_point)


@block_sparse_quantized_linear.register_fake
def _(
    x: torch.Tensor,
    x_zero_point: int,
    data: torch.Tensor,
    cols: torch.Tensor,
    counts: torch.Tensor,
    bias: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    out_zero_point: int,
) -> torch.Tensor:
    nb, _, _, r = data.shape
    return x.new_empty((*x.shape[:-1], nb * r), dtype=torch.int8)


@torch.library.custom_op(f"{_LIB}::block_sparse_quantized_linear_float", mutates_args=())
def block_sparse_quantized_linear_float(
    x: torch.Tensor,
    x_zero_point: int,
    data: torch.Tensor,
    cols: torch.Tensor,
    counts: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """``quantized_linear_float`` (fxpress/ir/ops.py) with its int8 weight as block-ELL `data` / `cols` / `counts`."""
    weight = dense_weight(data, cols, x.shape[-1])
    return torch.ops.fxpress.quantized_linear_float(x, x_zero_point, weight, bias, scale)


@block_sparse_quantized_linear_float.register_fake
def _(
    x: torch.Tensor,
    x_zero_point: int,
    data: torch.Tensor,
    cols: torch.Tensor,
    counts: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    nb, _, _, r = data.shape
    return x.new_empty((*x.shape[:-1], nb * r), dtype=torch.float32)
