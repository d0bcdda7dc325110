"""How each ATen op moves channels: the tables the channel analysis reads.

Three kinds of ops, each handled one way by `fxpress.passes.prune.propagate`:

- ``IDENTITY``: the output has the input's channels (dropout in eval, dtype
  conversions, contiguous, ...).
- ``MOVEMENT``: pure data movement (view, permute, cat, slice, split, flatten,
  ...). The analysis runs the op itself on a tensor of atom ids, so the exact
  index mapping (offsets of a cat, blocks of a flatten, heads of a reshape)
  comes out of ATen, not out of a model of it. Only ops whose shrunken form
  computes the restriction of the original mapping are listed (a roll or a
  ``channel_shuffle`` op would permute differently after pruning: not listed,
  so they block).
- ``SPECS``: compute ops described einsum-style by a `Spec`: a label per
  dimension of each tensor operand and of the output. Equal labels are coupled
  channels; labels absent from the output are reduced. ``contract`` labels are
  multiply-accumulated (a pruned channel contributes zero: exact);
  ``normalize`` labels are reduced or normalized in a way pruning changes
  (mean, softmax, layer_norm over channels: approximate).

Grouped convolution and group_norm need unions no labels express; the
propagator handles them after their spec (`GROUPED`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

import fxpress.ir.ops  # noqa: F401  (registers the fxpress ops named in BF16)
from fxpress.ir.opsets import BATCH_NORM, CONV, CONV_TRANSPOSE, bind, packet

aten = torch.ops.aten
fx_ops = torch.ops.fxpress
Shape = tuple[int, ...]
ShapeOf = Callable[[Any], Shape | None]


@dataclass
class Spec:
    """An op as labelled dimensions (see the module docstring)."""

    inputs: list[tuple[torch.fx.Node, tuple[str, ...]]]
    outputs: list[tuple[str, ...] | None]
    contract: frozenset[str] = frozenset()
    normalize: frozenset[str] = frozenset()
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def self_or_input(b: dict[str, Any]) -> torch.fx.Node:
    """The tensor operand of a bound op whose schema names it ``self`` or ``input``."""
    return b["self"] if "self" in b else b["input"]


def arg_index(target: Any, name: str) -> int:
    return next(i for i, a in enumerate(target._schema.arguments) if a.name == name)


IDENTITY = {
    aten.dropout,
    aten.contiguous,
    aten.clone,
    aten.alias,
    aten.detach,
    aten.lift_fresh_copy,
    aten._to_copy,
    aten.to,
    aten.type_as,
    aten.feature_dropout,
    aten.alpha_dropout,
}

MOVEMENT = {
    aten.view,
    aten.reshape,
    aten._unsafe_view,
    aten.permute,
    aten.transpose,
    aten.t,
    aten.unsqueeze,
    aten.squeeze,
    aten.flatten,
    aten.unflatten,
    aten.expand,
    aten.select,
    aten.slice,
    aten.narrow,
    aten.cat,
    aten.concat,
    aten.stack,
    aten.split,
    aten.split_with_sizes,
    aten.chunk,
    aten.unbind,
    aten.movedim,
    aten.swapaxes,
    aten.flip,
    aten.repeat,
    aten.pixel_shuffle,
    aten.pixel_unshuffle,
    aten.constant_pad_nd,
    aten.pad,  # constant mode only on channel dims (see propagate._movement_blocked)
}

ELEMENTWISE = {
    aten.add,
    aten.sub,
    aten.rsub,
    aten.mul,
    aten.div,
    aten.relu,
    aten.relu6,
    aten.gelu,
    aten.sigmoid,
    aten.silu,
    aten.mish,
    aten.hardswish,
    aten.hardsigmoid,
    aten.hardtanh,
    aten.leaky_relu,
    aten.elu,
    aten.selu,
    aten.softplus,
    aten.tanh,
    aten.clamp,
    aten.clamp_min,
    aten.clamp_max,
    aten.neg,
    aten.abs,
    aten.exp,
    aten.log,
    aten.sqrt,
    aten.rsqrt,
    aten.reciprocal,
    aten.pow,
    aten.square,
    aten.erf,
    aten.sin,
    aten.cos,
    aten.maximum,
    aten.minimum,
    aten.where,
    aten.masked_fill,
    aten.eq,
    aten.ne,
    aten.lt,
    aten.le,
    aten.gt,
    aten.ge,
    aten.logical_and,
    aten.logical_or,
    aten.logical_not,
    aten.bitwise_and,
    aten.bitwise_or,
    aten.__and__,
    aten.__or__,
    aten.prelu,
    aten.expand_as,  # the shape of the second operand: broadcasting, as far as channels go
}

_CHANNEL_NORMS = BATCH_NORM | {aten.instance_norm}  # per-channel affine and statistics: channels pass through
_REDUCE = {
    aten.mean: "mean",
    aten.sum: "sum",
    aten.amax: "amax",
    aten.amin: "amin",
    aten.var: "var",
    aten.std: "std",
    aten.linalg_vector_norm: "norm",
    aten.logsumexp: "logsumexp",
    aten.max: "max",
    aten.min: "min",
    aten.argmax: "argmax",
    aten.argmin: "argmin",
    aten.prod: "prod",
}
_POOL = {
    aten.adaptive_avg_pool1d: 1,
    aten.adaptive_avg_pool2d: 2,
    aten.adaptive_avg_pool3d: 3,
    aten._adaptive_avg_pool2d: 2,
    aten.adaptive_max_pool2d: 2,
    aten.avg_pool1d: 1,
    aten.avg_pool2d: 2,
    aten.avg_pool3d: 3,
    aten.max_pool1d: 1,
    aten.max_pool2d: 2,
    aten.max_pool3d: 3,
    aten.max_pool2d_with_indices: 2,
    aten.upsample_nearest1d: 1,
    aten.upsample_nearest2d: 2,
    aten.upsample_nearest3d: 3,
    aten.upsample_bilinear2d: 2,
    aten.upsample_bicubic2d: 2,
    aten._upsample_nearest_exact2d: 2,
    aten._upsample_bilinear2d_aa: 2,
}


def _tensor_args(node: torch.fx.Node, shape: ShapeOf) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []

    def keep(a: torch.fx.Node) -> torch.fx.Node:
        found.append(a)
        return a

    torch.fx.node.map_arg((node.args, node.kwargs), keep)
    return [a for a in found if shape(a) is not None]


def broadcast_labels(shapes: list[Shape], out: Shape, names: tuple[str, ...] | None = None) -> list[tuple[str, ...]]:
    """Right-aligned labels (``names`` of the output dims, default ``d{i}``).

    A size-1 dimension that broadcasts against a larger one gets a label of its own.
    """
    r = len(out)
    names = names or tuple(f"d{i}" for i in range(r))
    labels = []
    for k, s in enumerate(shapes):
        off = r - len(s)
        labels.append(
            tuple(names[off + i] if s[i] == out[off + i] and s[i] != 1 else f"_b{k}.{i}" for i in range(len(s)))
        )
    return labels


def _elementwise(node: torch.fx.Node, shape: ShapeOf, out: Any) -> Spec:
    inputs = _tensor_args(node, shape)
    shapes: list[Shape] = [shape(a) for a in inputs]  # type: ignore[misc]
    labels = broadcast_labels(shapes, out)
    return Spec(list(zip(inputs, labels, strict=True)), [tuple(f"d{i}" for i in range(len(out)))])


def _identity_labels(rank: int) -> tuple[str, ...]:
    return tuple(f"d{i}" for i in range(rank))


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _reduce(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x = self_or_input(b)
    xs = shape(x)
    assert xs is not None
    dims = b.get("dim")
    if dims is None or dims == []:
        dims = list(range(len(xs)))
    elif isinstance(dims, int):
        dims = [dims]
    red = {_dim(int(d), len(xs)) for d in dims}
    labels = _identity_labels(len(xs))
    keep = bool(b.get("keepdim", False))
    out_labels = tuple(f"_k{i}" if i in red else labels[i] for i in range(len(xs)) if keep or i not in red)
    outs: list[tuple[str, ...] | None] = [out_labels]
    if isinstance(out, list):  # max.dim / min.dim: (values, indices)
        outs = [out_labels, out_labels]
    kind = _REDUCE[packet(node)]
    return Spec([(x, labels)], outs, note=f"{kind} over channels")


def _softmax(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x = b["self"]
    xs = shape(x)
    assert xs is not None
    labels = _identity_labels(len(xs))
    d = _dim(int(b["dim"]), len(xs))
    return Spec([(x, labels)], [labels], normalize=frozenset({labels[d]}), note="softmax over channels")


def _layer_norm(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x = b["input"]
    xs = shape(x)
    assert xs is not None
    labels = _identity_labels(len(xs))
    k = len(b["normalized_shape"])
    inputs = [(x, labels)]
    inputs += [(b[p], labels[-k:]) for p in ("weight", "bias") if b.get(p) is not None]
    return Spec(inputs, [labels], normalize=frozenset(labels[-k:]), note="layer_norm over channels")


def _batch_norm(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x = b["input"]
    xs = shape(x)
    assert xs is not None
    labels = ("n", "c", *(f"s{i}" for i in range(len(xs) - 2)))
    inputs = [(x, labels)]
    inputs += [(b[p], ("c",)) for p in ("weight", "bias", "running_mean", "running_var") if b.get(p) is not None]
    outs: list[tuple[str, ...] | None] = [labels]
    if isinstance(out, list):  # (out, save_mean, save_invstd)
        outs = [labels] + [None] * (len(out) - 1)
    return Spec(inputs, outs)


def _group_norm(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x = b["input"]
    xs = shape(x)
    assert xs is not None
    labels = ("n", "c", *(f"s{i}" for i in range(len(xs) - 2)))
    inputs = [(x, labels)] + [(b[p], ("c",)) for p in ("weight", "bias") if b.get(p) is not None]
    return Spec(inputs, [labels], extra={"groups": int(b["num_groups"]), "channels": xs[1]})


def _linear(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x, w = b["input"], b["weight"]
    xs = shape(x)
    assert xs is not None
    lead = tuple(f"d{i}" for i in range(len(xs) - 1))
    inputs = [(x, (*lead, "k")), (w, ("o", "k"))]
    if b.get("bias") is not None:
        inputs.append((b["bias"], ("o",)))
    return Spec(inputs, [(*lead, "o")], contract=frozenset({"k"}))


def _conv(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec | None:
    x, w = b["input"], b["weight"]
    xs, ws = shape(x), shape(w)
    assert xs is not None and ws is not None
    nsp = len(ws) - 2
    transposed = bool(b.get("transposed", False)) or packet(node) in CONV_TRANSPOSE
    groups = int(b.get("groups", 1))
    if transposed and groups != 1:
        return None
    lead = ("n",) if len(xs) == nsp + 2 else ()
    sx = tuple(f"sx{i}" for i in range(nsp))
    k = tuple(f"k{i}" for i in range(nsp))
    x_labels = (*lead, "c", *sx)
    w_labels = ("c", "o", *k) if transposed else ("o", "c" if groups == 1 else "_wc", *k)
    inputs = [(x, x_labels), (w, w_labels)]
    if b.get("bias") is not None:
        inputs.append((b["bias"], ("o",)))
    out_labels = (*lead, "o", *(f"so{i}" for i in range(nsp)))
    return Spec(inputs, [out_labels], contract=frozenset({"c"}), extra={"groups": groups, "lead": len(lead)})


def _matmul_labels(a: Shape, b: Shape) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], Shape]:
    """Labels of matmul(a, b) -> out, numpy style (1-d operands, broadcast batch dims)."""
    a_core = ("k",) if len(a) == 1 else ("m", "k")
    b_core = ("k",) if len(b) == 1 else ("k", "n")
    a_batch, b_batch = a[: len(a) - len(a_core)], b[: len(b) - len(b_core)]
    r = max(len(a_batch), len(b_batch))
    padded = [(1,) * (r - len(s)) + tuple(s) for s in (a_batch, b_batch)]
    out_batch = tuple(max(x, y) for x, y in zip(*padded, strict=True))
    names = tuple(f"bt{i}" for i in range(r))
    la, lb = broadcast_labels([a_batch, b_batch], out_batch, names)
    out = names + tuple(c for c in ("m", "n") if c in a_core + b_core)
    return la + a_core, lb + b_core, out, out_batch


def _matmul(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    if packet(node) is aten.addmm:
        x, y, bias = b["mat1"], b["mat2"], b["self"]
    else:
        x, y, bias = b["self"], b["mat2"] if "mat2" in b else b["other"], None
    la, lb, lo, _ = _matmul_labels(shape(x), shape(y))  # type: ignore[arg-type]
    inputs = [(x, la), (y, lb)]
    if isinstance(bias, torch.fx.Node):
        inputs.append((bias, broadcast_labels([shape(bias)], tuple(out), lo)[0]))  # type: ignore[list-item]
    return Spec(inputs, [lo], contract=frozenset({"k"}))


def _sdpa(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec | None:
    q, k, v = b["query"], b["key"], b["value"]
    qs, ks, vs = shape(q), shape(k), shape(v)
    assert qs is not None and ks is not None and vs is not None
    if b.get("enable_gqa"):
        return None
    batch = [s[:-2] for s in (qs, ks, vs)]
    r = max(len(s) for s in batch)
    out_batch = tuple(max(d) for d in zip(*[(1,) * (r - len(s)) + tuple(s) for s in batch], strict=True))
    names = tuple(f"bt{i}" for i in range(r))
    lq, lk, lv = broadcast_labels(batch, out_batch, names)
    inputs = [(q, (*lq, "L", "E")), (k, (*lk, "S", "E")), (v, (*lv, "S", "F"))]
    mask = b.get("attn_mask")
    if isinstance(mask, torch.fx.Node):
        full = (*out_batch, qs[-2], ks[-2])
        inputs.append((mask, broadcast_labels([shape(mask)], full, (*names, "L", "S"))[0]))  # type: ignore[list-item]
    # with the default scale 1/sqrt(E), pruning E (single-head attention) changes the scale
    note = "" if b.get("scale") is not None else "scaled_dot_product_attention's default scale 1/sqrt(E)"
    contract = {"S"} if note else {"S", "E"}
    return Spec(inputs, [(*names, "L", "F")], contract=frozenset(contract), note=note)


def _embedding(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    w, idx = b["weight"], b["indices"]
    rank = len(shape(idx))  # type: ignore[arg-type]
    lead = tuple(f"d{i}" for i in range(rank))
    return Spec([(w, ("_v", "c")), (idx, lead)], [(*lead, "c")], contract=frozenset({"_v"}))


def _pool(node: torch.fx.Node, b: dict[str, Any], shape: ShapeOf, out: Any) -> Spec:
    x = self_or_input(b)
    xs = shape(x)
    assert xs is not None
    nsp = _POOL[packet(node)]
    lead = tuple(f"d{i}" for i in range(len(xs) - nsp))
    x_labels = (*lead, *(f"sx{i}" for i in range(nsp)))
    out_labels = (*lead, *(f"so{i}" for i in range(nsp)))
    outs: list[tuple[str, ...] | None] = [out_labels]
    if isinstance(out, list):  # max_pool2d_with_indices, adaptive_max_pool2d
        outs = [out_labels, out_labels]
    return Spec([(x, x_labels)], outs, note="pooling over a channel-carrying spatial dim")


def _functional(packet: Any) -> Any:
    """``aten.relu_`` -> ``aten.relu``: an in-place element-wise op couples channels like its functional form."""
    name = packet.__name__
    if name.endswith("_") and not name.startswith("__"):
        functional = getattr(aten, name[:-1], None)
        if functional in ELEMENTWISE:
            return functional
    return packet


BF16: dict[Any, Any] = {fx_ops.bf16_linear: aten.linear, fx_ops.bf16_conv2d: aten.conv2d}
"""cast-bf16's ops and the ATen op each computes (in bfloat16, fp32 sums): their channels move the same way."""


def spec_for(node: torch.fx.Node, shape: ShapeOf, out: Any) -> Spec | None:
    """The `Spec` of a compute op, or None when the analysis does not understand it."""
    target = node.target
    if target is operator.getitem or not isinstance(target, torch._ops.OpOverload):
        return None
    packet = _functional(target.overloadpacket)
    if packet in ELEMENTWISE:
        if not isinstance(out, tuple) and not isinstance(out, torch.Size):
            return None
        return _elementwise(node, shape, out)
    b = bind(target, node.args, node.kwargs)
    if packet in BF16:  # fxpress.bf16_linear / bf16_conv2d: aten.linear / conv2d's channels, computed in bf16
        b = {("input" if k == "x" else k): v for k, v in b.items()}
        packet = BF16[packet]
    if packet in _REDUCE:
        return _reduce(node, b, shape, out)
    if packet in (aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax):
        return _softmax(node, b, shape, out)
    if packet is aten.layer_norm:
        return _layer_norm(node, b, shape, out)
    if packet in _CHANNEL_NORMS:
        return _batch_norm(node, b, shape, out)
    if packet is aten.group_norm:
        return _group_norm(node, b, shape, out)
    if packet is aten.linear:
        return _linear(node, b, shape, out)
    if packet in CONV | CONV_TRANSPOSE:
        return _conv(node, b, shape, out)
    if packet in (aten.matmul, aten.bmm, aten.mm, aten.addmm):
        return _matmul(node, b, shape, out)
    if packet is aten.scaled_dot_product_attention:
        return _sdpa(node, b, shape, out)
    if packet is aten.embedding:
        return _embedding(node, b, shape, out)
    if packet in _POOL:
        return _pool(node, b, shape, out)
    return None
