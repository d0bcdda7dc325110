"""The layers the search chooses a method for: every linear and conv2d with a constant weight.

    layers = find_layers(graph, inputs)     # [Layer(name, module, op, weight shape, input shape, ...)]
    layers[0].pattern                        # a regex that names this layer and no other
    one_layer_module(graph, layer, out=48)   # an nn.Module holding just that layer (its weights)

`find_layers` runs the float graph once on the timing inputs and records each
layer's input (shape, and the tensor itself: it calibrates and times the
one-layer graph). Names: the module path when it is unique to the layer (what
``observe``'s ``skip`` / ``dynamic`` regexes, ``sparsify``'s and ``low-rank``'s
``layers`` and ``prune-channels``' ``protected`` all accept), else the fx node
name.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from fxpress.ir.graph import Graph
from fxpress.ir.opsets import module_path

_OPS = {torch.ops.aten.linear.default: "linear", torch.ops.aten.conv2d.default: "conv2d"}


@dataclass(frozen=True)
class Layer:
    """One searchable layer: its names, op kind, shapes and (for conv2d) geometry."""

    name: str  # the fx node name
    module: str  # its module path ("" at the top)
    op: str  # "linear" | "conv2d"
    weight: str  # the weight's get_attr target
    bias: str | None  # the bias's get_attr target
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int], int] = ((1, 1), (0, 0), (1, 1), 1)
    ident: str = ""  # what pipeline options name it: the unique module path, else the node name
    sample: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def pattern(self) -> str:
        """A regex for observe's skip/dynamic (searched) and sparsify/low-rank layers (fully matched)."""
        return f"^{re.escape(self.ident)}$"

    @property
    def shape_key(self) -> str:
        """What a one-layer latency depends on (besides the method): op, input and weight shapes, geometry."""
        key = f"{self.op} in={list(self.input_shape)} w={list(self.weight_shape)} bias={self.bias is not None}"
        if self.op == "conv2d":
            stride, padding, dilation, groups = self.conv
            key += f" s={list(stride)} p={list(padding)} d={list(dilation)} g={groups}"
        return key

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def weight_count(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n


class _Record(torch.fx.Interpreter):
    """Runs the graph and keeps the first input of every watched node."""

    def __init__(self, gm: torch.fx.GraphModule, watch: set[str]) -> None:
        super().__init__(gm)
        self.watch = watch
        self.seen: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.name in self.watch:
            x = self.env[n.args[0]] if isinstance(n.args[0], torch.fx.Node) else None
            if isinstance(x, torch.Tensor):
                self.seen[n.name] = x.detach().clone()
        return super().run_node(n)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, list | tuple) else (int(v), int(v))


def find_layers(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[Layer]:
    """Every linear / conv2d of `graph` whose weight is a parameter, with its input on `inputs` recorded."""
    nodes = [
        n
        for n in graph.nodes("call_function")
        if n.target in _OPS and len(n.args) > 1 and isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "get_attr"
    ]
    record = _Record(graph.gm, {n.name for n in nodes})
    with torch.no_grad():
        record.run(*inputs)
    paths = Counter(module_path(n) for n in nodes)
    layers = []
    for n in nodes:
        if n.name not in record.seen:
            continue  # not reached on these inputs (a branch): nothing to time
        op = _OPS[n.target]  # type: ignore[index]  # filtered above: an OpOverload of _OPS
        args: list[Any] = list(n.args) + [None] * 7
        weight_node: Any = n.args[1]
        bias = args[2] if isinstance(args[2], torch.fx.Node) and args[2].op == "get_attr" else None
        conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int], int] = ((1, 1), (0, 0), (1, 1), 1)
        if op == "conv2d":
            conv = (_pair(args[3] or 1), _pair(args[4] or 0), _pair(args[5] or 1), int(args[6] or 1))
        path = module_path(n)
        x = record.seen[n.name]
        layers.append(
            Layer(
                name=n.name,
                module=path,
                op=op,
                weight=str(weight_node.target),
                bias=str(bias.target) if bias is not None else None,
                weight_shape=tuple(graph.param(weight_node).shape),
                input_shape=tuple(x.shape),
                conv=conv,
                ident=path if path and paths[path] == 1 else n.name,
                sample=x,
            )
        )
    return layers


class OneLayer(nn.Module):
    """A module holding one layer (as ``self.layer``), so pipeline options name it ``layer``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def one_layer_module(graph: Graph, layer: Layer, out: int | None = None) -> OneLayer:
    """`layer` as a one-layer module with its weights; `out` keeps that many output channels (largest L1 first).

    A grouped conv is never cut (`Method.applies` keeps pruning off it), so its groups stay valid.
    """
    weight = graph.param(layer.weight).detach().clone()
    bias = graph.param(layer.bias).detach().clone() if layer.bias else None
    if out is not None and out < weight.shape[0]:
        keep = weight.abs().reshape(weight.shape[0], -1).sum(1).topk(out).indices.sort().values
        weight = weight[keep]
        bias = bias[keep] if bias is not None else None
    module: nn.Linear | nn.Conv2d
    if layer.op == "linear":
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)  # the weights are copied below
    else:
        stride, padding, dilation, groups = layer.conv
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        module = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, stride, padding, dilation, groups)
        if bias is None:
            module.bias = None
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None and module.bias is not None:
            module.bias.copy_(bias)
    return OneLayer(module.eval())
