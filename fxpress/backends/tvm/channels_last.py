"""Channels-last rewrite: AVX2 int8 convs, and what lies between them, in NHWC before export.

The AVX2 direct conv (kernels/int8_conv_avx2.py) works on channel-contiguous
pixels: its prologue packs the input as ``[N, H, W, C/V, V]`` and its register
tile holds 8-channel vectors. Between two NCHW convs that costs a transposing
prologue (a gather per lane) and an epilogue that transposes each tile and
stores it byte by byte. Measured on ResNet-18's stages (1 thread): the NHWC
epilogue, stored as whole vectors, made the stem conv 22 % and a 56x56 conv
15 % faster, and the prologue becomes a contiguous copy.

So before export, on a copy of the graph, each eligible conv (AVX2 target,
``groups == 1``, 4-D) becomes its NHWC op (fxpress/ir/layout_ops.py) between
two permutes:

    conv(x)  ->  to_nchw(conv_nhwc(to_nhwc(x)))

and the permutes move until they meet and cancel. A ``to_nchw`` sinks through
an op that does not care about the layout (``op(to_nchw(a)) -> to_nchw(op(a))``):

- element-wise ops with scalar arguments: ReLU (the in-place form only where
  nothing else reads its input), hardtanh/clamp, per-tensor quantize and dequantize;
- add, subtract and multiply of two tensors that both come out of a ``to_nchw``
  (or of one and a scalar);
- ``max_pool2d`` (floor mode), which becomes `max_pool2d_nhwc`.

``to_nhwc(to_nchw(a))`` is ``a``. A permute that meets anything else stays
(ResNet keeps one before its global average pool, 7x7 pixels), so the graph
computes the same values: the rewrite only moves exact layout changes. The two
rules, `sink_permute` and `cancel_permutes`, run under the greedy rewrite
driver (`fxpress.ir.rewrite`) until neither applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from fxpress.backends.tvm.targets import TargetSpec
from fxpress.ir import layout_ops, ops
from fxpress.ir.graph import Graph
from fxpress.ir.rewrite import rewrite

aten = torch.ops.aten
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]

CONVS = {
    ops.quantized_conv2d._opoverload: layout_ops.quantized_conv2d_nhwc._opoverload,
    ops.quantized_conv2d_float._opoverload: layout_ops.quantized_conv2d_float_nhwc._opoverload,
}
# Element-wise ops whose other arguments are scalars: (op, its out-of-place form).
UNARY = {
    aten.relu.default: aten.relu.default,
    aten.relu_.default: aten.relu.default,
    aten.hardtanh.default: aten.hardtanh.default,
    aten.hardtanh_.default: aten.hardtanh.default,
    aten.clamp.default: aten.clamp.default,
    ops.quantize._opoverload: ops.quantize._opoverload,
    ops.dequantize._opoverload: ops.dequantize._opoverload,
}
IN_PLACE = {aten.relu_.default, aten.hardtanh_.default}
BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor}


def _permute_of(node: Any, dims: list[int]) -> torch.fx.Node | None:
    """The input of `node` if it is ``permute(input, dims)``."""
    is_permute = isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == aten.permute.default
    return node.args[0] if is_permute and list(node.args[1]) == dims else None


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _eligible(node: torch.fx.Node) -> bool:
    """A 4-D, ``groups == 1`` int8 conv with every argument given by position: what the AVX2 direct conv takes."""
    if node.op != "call_function" or node.target not in CONVS or node.kwargs:
        return False
    if len(node.args) != len(node.target._schema.arguments):
        return False
    x, weight, groups = _val(node.args[0]), _val(node.args[2]), node.args[-1]
    return (
        x is not None
        and weight is not None
        and x.dim() == 4
        and weight.dim() == 4
        and isinstance(groups, int)
        and groups == 1
    )


def lower_channels_last(graph: Graph, spec: TargetSpec) -> tuple[Graph, int]:
    """A copy of `graph` with its eligible convs in NHWC and the permutes between them cancelled; how many convs.

    `graph` is returned unchanged (not copied) when the target's ISA has no channels-last int8 convs or
    no conv qualifies.
    """
    if not spec.isa.channels_last_int8:
        return graph, 0
    if not any(_eligible(n) for n in graph.fx.nodes):
        return graph, 0
    out = graph.copy()
    fx = out.fx
    convs = [n for n in fx.nodes if _eligible(n)]
    for conv in convs:
        with fx.inserting_before(conv):
            x = fx.call_function(aten.permute.default, (conv.args[0], TO_NHWC))
            new = fx.call_function(CONVS[conv.target], (x, *conv.args[1:]), dict(conv.kwargs))
        with fx.inserting_after(new):
            back = fx.call_function(aten.permute.default, (new, TO_NCHW))
        conv.replace_all_uses_with(back)
        fx.erase_node(conv)
    fx.eliminate_dead_code()
    rewrite(fx, [sink_permute, cancel_permutes])
    fx.eliminate_dead_code()
    out.gm.recompile()
    out.propagate_shapes()
    return out, len(convs)


def cancel_permutes(node: torch.fx.Node) -> torch.fx.Node | None:
    """``to_nhwc(to_nchw(a)) -> a``."""
    a = _permute_of(_permute_of(node, TO_NHWC), TO_NCHW)
    return a if a is not None and node.users else None


def sink_permute(node: torch.fx.Node) -> torch.fx.Node | None:
    """``op(to_nchw(a), ...) -> to_nchw(op(a, ...))`` for a layout-agnostic op (see the module doc)."""
    moved = _sinking(node)
    if moved is None:
        return None
    target, args, kwargs = moved
    with node.graph.inserting_before(node):
        new = node.graph.call_function(target, args, kwargs)
        return node.graph.call_function(aten.permute.default, (new, TO_NCHW))


def _sinking(node: torch.fx.Node) -> tuple[Callable[..., Any], tuple, dict] | None:
    """(target, args, kwargs) of `node`'s op applied before the ``to_nchw`` it reads, if it can move."""
    if node.op != "call_function" or not node.args:
        return None
    first = node.args[0]
    a = _permute_of(first, TO_NCHW)
    if a is None or not isinstance(first, torch.fx.Node):
        return None
    rest = node.args[1:]
    if any(isinstance(v, torch.fx.Node) for v in node.kwargs.values()):
        return None
    if node.target in UNARY:
        if any(isinstance(r, torch.fx.Node) for r in rest):
            return None
        if node.target in IN_PLACE and len(first.users) > 1:  # another reader sees the in-place result
            return None
        return UNARY[node.target], (a, *rest), dict(node.kwargs)
    if node.target in BINARY and len(rest) == 1:
        if not isinstance(rest[0], torch.fx.Node):  # a scalar operand
            return node.target, (a, rest[0]), dict(node.kwargs)
        b = _permute_of(rest[0], TO_NCHW)  # both 4-D and permuted alike: broadcasting commutes with the permute
        return None if b is None else (node.target, (a, b), dict(node.kwargs))
    if node.target == aten.max_pool2d.default:
        return _max_pool_nhwc(a, rest)
    return None


def _max_pool_nhwc(a: torch.fx.Node, rest: tuple) -> tuple[Callable[..., Any], tuple, dict] | None:
    """``max_pool2d(x, k, s, p, d, ceil)`` as `max_pool2d_nhwc` (floor mode only)."""

    def pair(v: Any, default: list[int]) -> list[int]:
        v = default if v is None or (isinstance(v, list | tuple) and not v) else v
        v = [int(i) for i in ([v] if isinstance(v, int) else v)]
        return [v[0], v[-1]]

    kernel = pair(rest[0], [1, 1])
    stride = pair(rest[1] if len(rest) > 1 else None, kernel)
    padding = pair(rest[2] if len(rest) > 2 else None, [0, 0])
    dilation = pair(rest[3] if len(rest) > 3 else None, [1, 1])
    if len(rest) > 4 and rest[4]:
        return None
    return layout_ops.max_pool2d_nhwc._opoverload, (a, kernel, stride, padding, dilation), {}
