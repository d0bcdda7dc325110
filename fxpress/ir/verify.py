"""The graph verifier: run after capture and (in tests, always) after every pass.

Checks, in order, each failing with a `VerifyError` that names the node:
1. the fx graph lints (SSA form, every use after its definition);
2. every ``get_attr`` resolves to a tensor on the module;
3. every call is an ATen / fxpress operator (``OpOverload``) or ``getitem``:
   the IR holds no Python modules or methods a backend could not lower;
4. shapes propagate (fake-tensor execution of the whole graph);
5. every annotation in ``node.meta["fxpress"]`` is an `Annotation` whose
   own ``check`` holds.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
import torch.fx

from fxpress.errors import VerifyError
from fxpress.ir.annotations import META_KEY, Annotation
from fxpress.ir.printer import locate
from fxpress.ir.shapes import propagate_shapes

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

_ALLOWED_CALLABLES = {operator.getitem}


def _fail(graph: Graph, node: torch.fx.Node, problem: str) -> VerifyError:
    return VerifyError(f"{problem}\n{locate(graph, node)}")


def verify(graph: Graph) -> None:
    """Raise `VerifyError` unless `graph` is well formed (see module docstring)."""
    try:
        graph.fx.lint()
    except Exception as exc:  # fx raises RuntimeError with its own description
        raise VerifyError(f"graph does not lint: {exc}") from exc
    for node in graph.nodes():
        if node.op == "get_attr":
            try:
                value = graph.param(node)
            except AttributeError:
                raise _fail(graph, node, f"get_attr {node.target!r} names no attribute of the module") from None
            if not isinstance(value, torch.Tensor):
                raise _fail(graph, node, f"get_attr {node.target!r} is a {type(value).__name__}, not a tensor")
        elif node.op == "call_function":
            if not isinstance(node.target, torch._ops.OpOverload) and node.target not in _ALLOWED_CALLABLES:
                raise _fail(graph, node, f"call of {node.target!r}: only ATen/fxpress operators may appear in the IR")
        elif node.op in ("call_module", "call_method"):
            raise _fail(graph, node, f"{node.op} {node.target!r}: the IR holds operator calls only")
    try:
        propagate_shapes(graph)
    except Exception as exc:
        raise VerifyError(f"shapes do not propagate: {str(exc).splitlines()[0]}") from exc
    for node in graph.nodes():
        for key, note in (node.meta.get(META_KEY) or {}).items():
            if not isinstance(note, Annotation):
                raise _fail(graph, node, f"annotation {key!r} is a {type(note).__name__}, not an fxpress Annotation")
            problem = note.check(node)
            if problem:
                raise _fail(graph, node, f"annotation {key!r} is inconsistent: {problem}")
