"""Converters for ATen ops where TVM 0.27's importer disagrees with PyTorch, or builds nothing that runs.

Found by the coverage zoo (tools/zoo), each with a test in tests/test_aten_fixes.py:

- ``div`` of integer tensors: PyTorch's true division returns a float (``arange(8) / 4`` is 0.25, 0.5,
  ...); the importer emitted Relax's ``divide`` on the integers, an integer division, and a following
  ``log`` refused its int64 input (DeBERTa-v2's log-bucket relative positions). Integer operands are
  cast to the result's float dtype first; integer floor division by a Python int made the constant
  int32 beside an int64 tensor and failed to build: operands take the result's dtype.
- ``clamp`` of an integer tensor with one bound: the importer filled the other with ``inf``, which no
  integer holds ("Cannot convert infinity to BigInt"); it is the dtype's limit instead.
- ``cumsum``: the importer emits ``R.cumsum``, which TVM 0.27 neither legalizes nor lets the VM run
  ("CodeGenVM cannot emit this Relax operator directly"); every causal LM of transformers 5 has one
  (its packed-sequence check). Emitted as TOPI's cumsum instead, in the result dtype torch gives (a
  bool or integer cumsum is int64).
- ``select`` with a negative index (``x[:, :, -1]``, the last step of a sequence): the importer took
  index -1 in TVM's "fast" mode, which reads out of bounds: the TCN in the zoo returned garbage. The
  index is counted from the end, as torch does.
- ``diff`` (transformers' packed-sequence check in GPT-2, Llama and their kin): no converter; slices and a
  subtraction (static sizes).
- ``amax`` / ``amin`` (a text CNN's max-over-time pooling): no converter at all; Relax's max / min.
"""

from __future__ import annotations

from typing import Any

import torch
from tvm import relax, tirx, topi

from fxpress.backends.tvm.support import builtin_converters


def _dtype(node: Any) -> torch.dtype | None:
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _as(value: Any, dtype: str, bb: relax.BlockBuilder) -> relax.Expr:
    """`value` (a Relax tensor or a Python number) as `dtype`."""
    if isinstance(value, bool | int | float):
        return relax.const(float(value), dtype)
    if str(value.ty.dtype) != dtype:
        return bb.emit(relax.op.astype(value, dtype))
    return value


def divide(node: Any, importer: Any) -> relax.Expr:
    """``div.Tensor`` / ``div.Scalar`` / ``div.Tensor_mode`` in the dtype of torch's result.

    Both operands are brought to that dtype first: a float result of integer operands is a true
    division; an integer result keeps integer floor or trunc division, with a Python scalar operand
    made a constant of the tensor's dtype (the importer made it int32 beside an int64 tensor).
    """
    out = _dtype(node)
    if out is None:
        return builtin_converters(importer)[node.target.__name__](node)
    rounding = node.kwargs.get("rounding_mode") if len(node.args) <= 2 else node.args[2]
    dtype = str(out).removeprefix("torch.")
    a, b = importer.retrieve_args(node)[:2]
    bb = importer.block_builder
    a, b = _as(a, dtype, bb), _as(b, dtype, bb)
    if rounding == "floor":
        if out.is_floating_point:
            return bb.emit(relax.op.floor(bb.emit(relax.op.divide(a, b))))
        return bb.emit(relax.op.floor_divide(a, b))
    quotient = bb.emit(relax.op.divide(a, b))  # on integers: truncating division
    return bb.emit(relax.op.trunc(quotient)) if rounding == "trunc" and out.is_floating_point else quotient


def clamp(node: Any, importer: Any) -> relax.Expr:
    """``clamp.default`` of an integer tensor: a missing bound is the dtype's limit (the importer used inf)."""
    out = _dtype(node)
    if out is None or out.is_floating_point or out == torch.bool:
        return builtin_converters(importer)["clamp.default"](node)
    args = importer.retrieve_args(node)
    x = args[0]
    low = args[1] if len(args) > 1 else node.kwargs.get("min")
    high = args[2] if len(args) > 2 else node.kwargs.get("max")
    info = torch.iinfo(out)
    low = info.min if low is None else low
    high = info.max if high is None else high
    if not all(isinstance(v, int | float) for v in (low, high)):
        return builtin_converters(importer)["clamp.default"](node)
    return importer.block_builder.emit(relax.op.clip(x, int(low), int(high)))


def cumsum(node: Any, importer: Any) -> relax.Expr:
    """``cumsum.default`` as TOPI's cumsum over the normalised axis, in torch's result dtype."""
    args = importer.retrieve_args(node)
    x, dim = args[0], int(args[1])
    out = _dtype(node)
    dtype = str(out).removeprefix("torch.") if out is not None else str(x.ty.dtype)
    axis = dim % x.ty.ndim
    bb = importer.block_builder
    if str(x.ty.dtype) == "bool":
        x = bb.emit(relax.op.astype(x, dtype))
    return bb.emit(bb.call_te(topi.cumsum, x, axis, dtype, primfunc_name_hint="cumsum"))


def select(node: Any, importer: Any) -> relax.Expr:
    """``select.int`` (``x[:, :, -1]``): a negative index counted from the end, as in torch."""
    x = importer.env[node.args[0]]
    dim, index = int(node.args[1]), int(node.args[2])
    dim %= x.ty.ndim
    mode = "fast"
    if index < 0:
        size = x.ty.shape.values[dim]
        if isinstance(size, tirx.IntImm):
            index += int(size)
        else:
            mode = "wrap"  # a symbolic dimension: wrap the index at run time
    bb = importer.block_builder
    return bb.emit(relax.op.take(x, relax.const(index, "int64"), dim, mode=mode))


def diff(node: Any, importer: Any) -> relax.Expr:
    """``diff.default``: `n` times ``x[1:] - x[:-1]`` along `dim`, after concatenating `prepend` / `append`."""
    args = importer.retrieve_args(node)
    get = lambda i, key, default: args[i] if len(args) > i else node.kwargs.get(key, default)  # noqa: E731
    x, n, dim = args[0], int(get(1, "n", 1)), int(get(2, "dim", -1))
    prepend, append = get(3, "prepend", None), get(4, "append", None)
    bb = importer.block_builder
    dim %= x.ty.ndim
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        x = bb.emit(relax.op.concat(parts, axis=dim))
    for _ in range(n):
        size = x.ty.shape.values[dim]
        if not isinstance(size, tirx.IntImm):
            return builtin_converters(importer)["diff.default"](node)  # none: the pre-check named it
        size = int(size)
        later = bb.emit(relax.op.strided_slice(x, axes=[dim], begin=[1], end=[size]))
        earlier = bb.emit(relax.op.strided_slice(x, axes=[dim], begin=[0], end=[size - 1]))
        if str(x.ty.dtype) == "bool":  # torch: logical xor for bool
            x = bb.emit(relax.op.not_equal(later, earlier))
        else:
            x = bb.emit(relax.op.subtract(later, earlier))
    return x


def _extremum(kind: str) -> Any:
    def convert(node: Any, importer: Any) -> relax.Expr:
        """``amax`` / ``amin``: Relax's max / min over the dims (all when none), keeping them if asked."""
        args = importer.retrieve_args(node)
        x = args[0]
        dims = args[1] if len(args) > 1 else node.kwargs.get("dim", [])
        keep = bool(args[2] if len(args) > 2 else node.kwargs.get("keepdim", False))
        axis = None if not dims else [int(d) % x.ty.ndim for d in ([dims] if isinstance(dims, int) else dims)]
        op = relax.op.max if kind == "max" else relax.op.min
        return importer.block_builder.emit(op(x, axis=axis, keepdims=keep))

    return convert


CONVERTERS = {
    "select.int": select,
    "diff.default": diff,
    "amax.default": _extremum("max"),
    "amin.default": _extremum("min"),
    "div.Tensor": divide,
    "div.Scalar": divide,
    "div.Tensor_mode": divide,
    "clamp.default": clamp,
    "cumsum.default": cumsum,
}
