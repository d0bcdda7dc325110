"""What TVM's PyTorch importer can take, checked before it runs, and its failures tied to the node.

TVM's importer refuses a graph with an op it has no converter for by an ``AssertionError`` listing names
(``Unsupported function types ['cummax.default']``), and a converter that fails raises whatever its code
hits, with no word of which node of the user's model it was converting. `check_supported` finds every
op neither TVM nor fxpress converts before import and raises one `BackendError` that names each op, the
first node using it, that node's printed line and the model's source line, and the fallbacks that run
such a graph. `guard` wraps every converter the graph uses so a converter's failure is a `BackendError`
naming the node and the op instead of an importer traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import torch
from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

from fxpress.errors import BackendError
from fxpress.ir.graph import Graph
from fxpress.ir.printer import locate, user_source

FALLBACK = (
    "fallbacks: fxpress.compile(graph, target='eager') runs the optimized graph in PyTorch, and "
    "torch.compile(model, backend='fxpress') runs a subgraph it cannot compile in eager PyTorch with a "
    "FallbackWarning; to compile it with TVM, write that part of the model with supported ops or add a "
    "converter in fxpress/backends/tvm/convert_map.py"
)


@cache
def importer_ops() -> frozenset[str]:
    """The op names (``linear.default``) TVM 0.27's ExportedProgram importer has a converter for."""
    return frozenset(ExportedProgramImporter().create_convert_map())


def _op_name(node: torch.fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target))


def _where(graph: Graph, node: torch.fx.Node) -> str:
    """The graph line of `node` (matched by name in `graph`) underlined, else the model source line."""
    same = next((n for n in graph.fx.nodes if n.name == node.name and n.target == node.target), None)
    if same is not None:
        return locate(graph, same)
    source = user_source(node)
    return f"  node %{node.name}" + (f"\n  from {source}" if source else "")


def check_supported(ep: torch.export.ExportedProgram, graph: Graph, custom: Mapping[str, Any]) -> None:
    """Raise a `BackendError` naming every op of `ep` that neither TVM's importer nor `custom` converts."""
    known = importer_ops() | set(custom)
    first: dict[str, torch.fx.Node] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and _op_name(node) not in known:
            first.setdefault(_op_name(node), node)
    if not first:
        return
    name, node = next(iter(first.items()))
    ops = ", ".join(f"{op} (node %{n.name})" for op, n in first.items())
    raise BackendError(
        f"unsupported op {name} at node %{node.name}: TVM's PyTorch importer has no converter for "
        f"{'it' if len(first) == 1 else f'these {len(first)} ops: {ops}'}",
        node=node.name,
        notes=[_where(graph, node), FALLBACK],
    )


def builtin_converters(importer: Any) -> dict[str, Callable[..., Any]]:
    """The importer's own converters, bound to it (built once per importer: our wrappers replace them in
    its ``convert_map``)."""
    table = getattr(importer, "_fxpress_builtin", None)
    if table is None:
        table = ExportedProgramImporter.create_convert_map(importer)
        importer._fxpress_builtin = table
    return table


def guard(
    convert: Mapping[str, Callable[..., Any]], ep: torch.export.ExportedProgram, graph: Graph
) -> dict[str, Callable[..., Any]]:
    """`convert` plus a wrapper for every op `ep` uses, so a converter's failure names the node it was on.

    The importer calls custom converters as ``f(node, importer)`` and its own as bound methods ``f(node)``;
    a wrapper for one of its own looks the bound method up on the importer it is given.
    """
    out: dict[str, Callable[..., Any]] = {}
    used = {_op_name(n) for n in ep.graph.nodes if n.op == "call_function"}
    for name in used:
        inner = convert.get(name)

        def wrapped(node: torch.fx.Node, importer: Any, _name: str = name, _inner: Any = inner) -> Any:
            try:
                if _inner is not None:
                    return _inner(node, importer)
                return builtin_converters(importer)[_name](node)
            except BackendError:
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise BackendError(
                    f"converting node %{node.name} ({_name}) for TVM failed: {type(exc).__name__}: {first}",
                    node=node.name,
                    notes=[_where(graph, node), FALLBACK],
                ) from exc

        out[name] = wrapped
    for name, fn in convert.items():
        out.setdefault(name, fn)
    return out
