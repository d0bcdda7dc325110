"""A dynamo subgraph as a model fxpress can capture: which placeholder is what, and a wrapper module around it.

    dynamo:  gm(L_self_fc_weight, s77, L_x_, L_self_bn_running_mean, ...)   weights lifted to inputs
    here:    DynamoSubgraph(gm).forward(x0)  with fc_weight, bn_running_mean as frozen parameters and s77 = x0.shape[0]

`layout` classifies the placeholders dynamo hands a backend (a user input; a parameter or buffer of the
compiled module, lifted to an input since ``inline_inbuilt_nn_modules``; a symbolic size, read off the input
dimension it stands for), `subgraph_module` builds the wrapper that torch.export (`fxpress.capture`) sees,
`outputs_spec` gives the outputs' structure, `tidy_module_paths` drops dynamo's frame prefix from the module
paths the capture keeps, and `check_inference` refuses a graph in training mode. Anything this cannot take
raises `Unsupported`, which the backend turns into a fallback to eager PyTorch with one warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

_DYNAMO_ROOT = re.compile(r"^L\['self'\]\.?")


class Unsupported(Exception):
    """A subgraph that this backend does not compile; the message says why (it becomes a `FallbackWarning`)."""


@dataclass
class Layout:
    """What each placeholder of a dynamo subgraph is: a user input, a weight, or a size of a user input."""

    count: int
    inputs: list[int] = field(default_factory=list)  # placeholder index of each user input, in order
    names: list[str] = field(default_factory=list)  # each user input's name in the compiled function
    weights: dict[int, tuple[str, torch.Tensor]] = field(default_factory=dict)  # index -> (attribute, tensor)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (user input, dimension)
    dynamic: list[dict[int, str]] = field(default_factory=list)  # per user input: dimension -> symbol


def _is_weight(node: torch.fx.Node, value: Any) -> bool:
    from torch._dynamo.source import is_from_unspecialized_param_buffer_source

    source = getattr(node.meta.get("grapharg"), "source", None)
    return isinstance(value, nn.Parameter) or (source is not None and is_from_unspecialized_param_buffer_source(source))


def _attribute(placeholder: str, taken: set[str]) -> str:
    """A readable attribute name for a lifted weight: ``l_self_modules_bn_buffers_running_mean_`` -> ``bn_running_mean``."""
    name = re.sub(r"^l_self_|(?<![a-z0-9])(modules|parameters|buffers)_|_+$", "", placeholder) or "weight"
    name = re.sub(r"\W", "_", name)
    if not name.isidentifier() or name in taken:
        name = f"w{len(taken)}_{name}" if f"w{len(taken)}_{name}".isidentifier() else f"w{len(taken)}"
    taken.add(name)
    return name


def _symbol(value: Any) -> str | None:
    """The symbol a symbolic size is (``s77``); None for a static size. An expression is not supported."""
    if not isinstance(value, torch.SymInt):
        return None
    expr = value.node.expr
    if not getattr(expr, "is_Symbol", False):
        if getattr(expr, "is_number", False):
            return None
        raise Unsupported(f"an input has a size {expr} that is an expression of other sizes")
    return str(expr)


def layout(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Layout:
    """Classify `gm`'s placeholders (see `Layout`); raises `Unsupported` for an input fxpress cannot take."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    if len(placeholders) != len(example_inputs):
        raise Unsupported(f"{len(placeholders)} placeholders but {len(example_inputs)} example inputs")
    out, taken, where = Layout(len(placeholders)), set[str](), {}
    sizes = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs, strict=True)):
        if isinstance(value, torch.SymInt | int) and not isinstance(value, bool):
            sizes.append((i, node))
        elif not isinstance(value, torch.Tensor):
            raise Unsupported(f"input {node.name} is a {type(value).__name__}; fxpress compiles tensor inputs only")
        elif value.device.type != "cpu":
            raise Unsupported(
                f"input {node.name} is on {value.device}; fxpress's torch.compile backend runs on the CPU"
            )
        elif _is_weight(node, value):
            out.weights[i] = (_attribute(node.name, taken), value)
        else:
            source = getattr(node.meta.get("grapharg"), "source", None)
            out.names.append(str(getattr(source, "local_name", node.name)))
            fake = node.meta.get("example_value", value)
            dims = {d: s for d, size in enumerate(fake.shape) if (s := _symbol(size)) is not None}
            where.update({s: (len(out.inputs), d) for d, s in dims.items()})
            out.inputs.append(i)
            out.dynamic.append(dims)
    for i, node in sizes:
        symbol = _symbol(node.meta.get("example_value"))
        if symbol is None or symbol not in where:
            raise Unsupported(f"the subgraph takes a number {node.name} that is no dimension of a tensor input")
        out.sizes[i] = where[symbol]
    return out


class DynamoSubgraph(nn.Module):
    """A dynamo subgraph as a model of its user inputs alone: weights as (frozen) parameters, sizes read off inputs.

    Returns the subgraph's outputs flattened to a tuple of tensors (see `outputs_spec`). Make one with
    `subgraph_module`, which gives ``forward`` one named parameter per input: torch.export binds
    ``dynamic_shapes`` to those, and fxpress re-exports the captured graph with the same spec.
    """

    def __init__(self, gm: torch.fx.GraphModule, layout: Layout) -> None:
        super().__init__()
        self.body = gm
        self.layout = layout
        for name, tensor in layout.weights.values():
            self.register_parameter(name, nn.Parameter(tensor.detach(), requires_grad=False))

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lay = self.layout
        by_slot = dict(zip(lay.inputs, inputs, strict=True))
        args: list[Any] = []
        for i in range(lay.count):
            if i in by_slot:
                args.append(by_slot[i])
            elif i in lay.weights:
                args.append(getattr(self, lay.weights[i][0]))
            else:
                k, d = lay.sizes[i]
                args.append(inputs[k].shape[d])
        with torch.fx.traceback.preserve_node_meta():  # the captured ops keep dynamo's module paths
            out = torch.fx.Interpreter(self.body).run(*args)
        return tuple(pytree.tree_leaves(out))


def subgraph_module(gm: torch.fx.GraphModule, lay: Layout) -> DynamoSubgraph:
    """A `DynamoSubgraph` whose ``forward(self, x0, x1, ...)`` takes the user inputs by position."""
    names = [f"x{k}" for k in range(len(lay.inputs))]
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return self.run({', '.join(names)})\n", namespace)
    cls = type("DynamoSubgraph", (DynamoSubgraph,), {"forward": namespace["forward"], "__module__": __name__})
    return cls(gm, lay)


def outputs_spec(gm: torch.fx.GraphModule) -> pytree.TreeSpec:
    """The structure of `gm`'s outputs; raises `Unsupported` when one is not a tensor."""
    (output,) = gm.graph.find_nodes(op="output")
    leaves, spec = pytree.tree_flatten(output.args[0])
    for leaf in leaves:
        value = leaf.meta.get("example_value") if isinstance(leaf, torch.fx.Node) else leaf
        if not isinstance(value, torch.Tensor):
            raise Unsupported(f"the subgraph returns a {type(value).__name__}; fxpress compiles tensor outputs only")
    return spec


def _argument(node: torch.fx.Node, op: torch._ops.OpOverload, name: str) -> Any:
    for i, arg in enumerate(op._schema.arguments):
        if arg.name == name:
            return node.args[i] if i < len(node.args) else node.kwargs.get(name, arg.default_value)
    return None


def check_inference(graph: Any) -> None:
    """Refuse a captured graph that writes its inputs or weights, or draws random numbers (training mode)."""
    for node in graph.nodes("call_function"):
        op = node.target
        if not isinstance(op, torch._ops.OpOverload):
            continue
        for i, arg in enumerate(op._schema.arguments):
            written = arg.alias_info is not None and arg.alias_info.is_write
            target = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if written and isinstance(target, torch.fx.Node) and target.op in ("placeholder", "get_attr"):
                raise Unsupported(
                    f"the subgraph writes {target.name} in place ({op}: BatchNorm statistics in training mode?); "
                    "fxpress compiles inference graphs: call model.eval() first"
                )
        random = torch.Tag.nondeterministic_seeded in op.tags
        if random and _argument(node, op, "train") is not False:  # dropout(train=False) is the identity
            raise Unsupported(
                f"the subgraph draws random numbers ({op}: dropout in training mode?); "
                "fxpress compiles inference graphs: call model.eval() first"
            )


def tidy_module_paths(graph: Any) -> None:
    """Dynamo's module paths without its frame prefix: ``L['self'].encoder.layer.0`` -> ``encoder.layer.0``.

    Passes that pick layers by module path (``observe{dynamic=[...]}``, ``skip``) then match the same names
    as on a model captured directly.
    """
    for node in graph.nodes():
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {
                k: (_DYNAMO_ROOT.sub("", path), *rest) for k, (path, *rest) in stack.items()
            }


def dynamic_shapes(lay: Layout) -> tuple[dict[int, Any], ...] | None:
    """``dynamic_shapes`` for capturing the wrapper: the dimensions dynamo left symbolic, as ``Dim.AUTO``."""
    if not any(lay.dynamic):
        return None
    auto = torch.export.Dim.AUTO
    return tuple({d: auto for d in dims} for dims in lay.dynamic)
