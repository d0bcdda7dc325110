"""cast-bf16: compute chosen float linears and convs in bfloat16 (fp32 sums), the opt-in precision between fp32 and int8.

    %y = aten.linear(%x, %fc.weight, %fc.bias)
      -> %y = fxpress.bf16_linear(%x, %fc.weight, %fc.bias)
    %y = aten.conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1], [1, 1], 1)
      -> %y = fxpress.bf16_conv2d(%x, %conv.weight, %conv.bias, [1, 1], [1, 1], [1, 1], 1)

Each selected ``aten.linear`` or ``aten.conv2d`` whose weight is a ``get_attr`` parameter
becomes ``fxpress.bf16_linear`` / ``bf16_conv2d``: its input and weight rounded to bfloat16
(round to nearest even), the products summed in float32, the bias added in
float32 (`fxpress.ir.ops`). The weight parameter stays as it is (the op
rounds it, so a later ``fine-tune`` trains it straight through the rounding);
the TVM backend rounds it once at compile time and stores bf16 bits, half
the bytes of float32. On a host with AMX-BF16 the compiled layer runs on
``tdpbf16ps`` tiles (isa/x86_amx/bf16.py; convs through im2col); elsewhere
float32 kernels over the rounded values compute the same numbers.

Options: ``layers`` (regexes searched in the node name and module path, as
``observe``'s; empty: every linear and conv), ``skip`` (regexes to leave alone).
The pass casts only the layers quantization leaves in float: a layer that
``observe`` annotated for int8 (static or dynamic) keeps its annotation and
stays, so ``observe{skip=[ffn]},calibrate,fold-qdq,cast-bf16`` gives the
skipped layers bf16 and the rest int8; run before ``observe``, the cast
layers are no longer ``aten.linear`` / ``aten.conv2d`` and stay out of int8. ``fxpress
quant-report --bf16`` measures what bf16 costs each layer.

Requires: nothing. Establishes: ``bf16-cast``; invalidates nothing (no
weight changes; activations after a cast layer keep their calibrated ranges
up to bf16 rounding: calibrate after it for exact ones). Numerics: the graph computes the rounded products exactly in
eager PyTorch; compiled kernels differ only in the order of float32 sums.
Bad input: an invalid regex, a ``layers`` pattern matching no linear or conv
(the message lists them), each a `ValueError`. Leaves alone: layers with
computed weights, string-padded, transposed and 1-D/3-D convs, quantized or
annotated layers, and a graph already cast (a second run changes nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx

from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.opsets import module_path
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.quant.annotations import DynamicQuant, QuantParams

aten = torch.ops.aten


def _names(node: torch.fx.Node) -> list[str]:
    return [s for s in (node.name, module_path(node)) if s]


CONV_DEFAULTS = (None, [1, 1], [0, 0], [1, 1], 1)  # aten.conv2d's bias, stride, padding, dilation, groups


def _layers(graph: Graph) -> list[torch.fx.Node]:
    """The ``aten.linear`` and ``aten.conv2d`` nodes whose weight is a parameter."""
    return [
        n
        for n in graph.nodes("call_function")
        if n.target in (aten.linear.default, aten.conv2d.default)
        and isinstance(n.args[1], torch.fx.Node)
        and n.args[1].op == "get_attr"
    ]


def _bf16_call(node: torch.fx.Node) -> tuple[object, tuple[object, ...]]:
    """The bf16 op and its arguments for `node` (a linear or conv2d)."""
    x, weight, *rest = node.args
    if node.target == aten.linear.default:
        return torch.ops.fxpress.bf16_linear.default, (x, weight, rest[0] if rest else None)
    given = (*rest, *CONV_DEFAULTS[len(rest) :])
    bias, stride, padding, dilation, groups = given
    lists = [list(v) for v in (stride, padding, dilation)]  # type: ignore[arg-type]
    return torch.ops.fxpress.bf16_conv2d.default, (x, weight, bias, *lists, groups)


def _quantized(node: torch.fx.Node) -> bool:
    """``observe`` chose int8 for `node`: it, or its weight, carries quantization parameters or a dynamic mark."""
    weight = node.args[1]
    marks = (notes.get(node, QuantParams.key), notes.get(node, DynamicQuant.key))
    return any(m is not None for m in marks) or (
        isinstance(weight, torch.fx.Node) and notes.get(weight, QuantParams.key) is not None
    )


@dataclass(frozen=True)
class CastBf16(Pass):
    """Rewrite selected float linears and convs to fxpress's bf16 ops (see the module docstring)."""

    name = "cast-bf16"
    establishes = frozenset({Property.BF16_CAST})
    layers: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in (*self.layers, *self.skip):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"cast-bf16: bad regex {pattern!r}: {exc}") from None

    def _selected(self, node: torch.fx.Node) -> bool:
        names = _names(node)
        if self.layers and not any(re.search(p, s) for p in self.layers for s in names):
            return False
        return not any(re.search(p, s) for p in self.skip for s in names)

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        layers = _layers(graph)
        for pattern in self.layers:
            if not any(re.search(pattern, s) for n in layers for s in _names(n)):
                listed = ", ".join(sorted({module_path(n) or n.name for n in layers})[:12]) or "none"
                raise ValueError(
                    f"cast-bf16: layers pattern {pattern!r} matches no float linear or conv; they are: {listed}"
                )
        cast, quantized = 0, 0
        for node in layers:
            if not self._selected(node):
                continue
            if _quantized(node):
                quantized += 1  # observe chose int8 for it: fold-qdq's, not ours
                continue
            op, args = _bf16_call(node)
            with graph.fx.inserting_before(node):
                new = graph.fx.call_function(op, args)  # type: ignore[arg-type]
            new.meta.update(node.meta)
            node.replace_all_uses_with(new)
            graph.fx.erase_node(node)
            cast += 1
        stats = {"cast": cast, **({"left_quantized": quantized} if quantized else {})}
        return PassResult(graph, modified=cast > 0, stats=stats)
