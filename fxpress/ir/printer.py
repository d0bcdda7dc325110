"""A stable text form of a `Graph`, for golden tests, `--print-ir-after-all` and errors.

Stable means: the same graph prints the same text whatever the capture's
internal names were. Computed values are renumbered ``%0, %1, ...`` in order;
inputs keep the names of the model's ``forward`` arguments; parameters print as
their attribute path (``%conv.weight``); tensors print as dtype and shape
(``f32[s0,8,32,32]``, symbolic sizes renamed ``s0, s1`` in order of appearance);
floats are rounded to 4 significant digits; annotations print after ``#``.

    graph(%x: f32[1,3,8,8]) {
      %c.weight = param f32[8,3,3,3]
      %0 = aten.conv2d(%x, %c.weight, none, [1, 1], [1, 1]) : f32[1,8,8,8]
      return %0
    }
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from fxpress.ir.annotations import META_KEY

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

_DTYPES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "bool",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPES.get(dtype, str(dtype).removeprefix("torch."))


def op_name(target: Any) -> str:
    """``torch.ops.aten.conv2d.default`` -> ``aten.conv2d``; other overloads kept."""
    if isinstance(target, torch._ops.OpOverload):
        ns, name, overload = target.namespace, target._opname, target._overloadname
        return f"{ns}.{name}" if overload == "default" else f"{ns}.{name}.{overload}"
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    return f"{module.split('.')[-1]}.{name}" if module in ("_operator", "operator") else name


class _Printer:
    def __init__(self) -> None:
        self.names: dict[torch.fx.Node, str] = {}
        self.symbols: dict[str, str] = {}

    def symbol(self, expr: str) -> str:
        def rename(m: re.Match[str]) -> str:
            return self.symbols.setdefault(m.group(0), f"s{len(self.symbols)}")

        return re.sub(r"\b[su]\d+\b", rename, expr)

    def tensor_type(self, val: Any) -> str:
        if isinstance(val, torch.Tensor):
            dims = ",".join(self.symbol(str(d)) for d in val.shape)
            return f"{dtype_name(val.dtype)}[{dims}]"
        if isinstance(val, tuple | list):
            return "(" + ", ".join(self.tensor_type(v) for v in val) + ")"
        if isinstance(val, torch.SymInt | int):
            return f"int({self.symbol(str(val))})"
        return "?"

    def arg(self, a: Any) -> str:
        if isinstance(a, torch.fx.Node):
            return "%" + self.names.get(a, a.name)
        if isinstance(a, bool):
            return "true" if a else "false"
        if a is None:
            return "none"
        if isinstance(a, float):
            text = f"{a:.4g}"
            return text if any(c in text for c in ".ein") else f"{text}.0"  # 2.0, not 2: that reads as an int
        if isinstance(a, list | tuple):
            return "[" + ", ".join(self.arg(x) for x in a) + "]"
        if isinstance(a, dict):
            return "{" + ", ".join(f"{k}={self.arg(v)}" for k, v in a.items()) + "}"
        if isinstance(a, torch.dtype):
            return dtype_name(a)
        if isinstance(a, torch.device):
            return a.type
        if isinstance(a, str):
            return repr(a)
        return self.symbol(str(a))

    def node_line(self, node: torch.fx.Node, index: int) -> str:
        ty = self.tensor_type(node.meta.get("val"))
        notes = node.meta.get(META_KEY) or {}
        suffix = ("  # " + "; ".join(notes[k].text() for k in sorted(notes))) if notes else ""
        if node.op == "get_attr":
            self.names[node] = str(node.target)
            return f"  %{node.target} = param {ty}{suffix}"
        self.names[node] = str(index)
        args = [self.arg(a) for a in node.args] + [f"{k}={self.arg(v)}" for k, v in node.kwargs.items()]
        return f"  %{index} = {op_name(node.target)}({', '.join(args)}) : {ty}{suffix}"

    def render(self, graph: Graph) -> str:
        params = [n for n in graph.nodes("get_attr")]
        header = ", ".join(f"%{p.name}: {self.tensor_type(p.meta.get('val'))}" for p in graph.inputs)
        lines = [f"graph({header}) {{"]
        for p in graph.inputs:
            self.names[p] = p.name
        lines += [self.node_line(p, 0) for p in sorted(params, key=lambda n: str(n.target))]
        index = 0
        for node in graph.nodes():
            if node.op in ("call_function", "call_module", "call_method"):
                lines.append(self.node_line(node, index))
                index += 1
        out = graph.output_node.args[0]
        ret = ", ".join(self.arg(o) for o in out) if isinstance(out, tuple | list) else self.arg(out)
        lines.append(f"  return {ret}")
        lines.append("}")
        return "\n".join(lines)


def print_graph(graph: Graph) -> str:
    """The stable text form of `graph` (see the module docstring)."""
    return _Printer().render(graph)


def node_names(graph: Graph) -> dict[torch.fx.Node, str]:
    """The name each node prints under, without the ``%``: input names, parameter paths, ``0, 1, ...``.

    These are the names users read in ``print(graph)``, so they are the names
    other tools (distillation's taps) accept for a node.
    """
    printer = _Printer()
    printer.render(graph)
    return dict(printer.names)


def locate(graph: Graph, node: torch.fx.Node) -> str:
    """The printed line of `node` underlined with ``^^^``, plus the model source line.

    Used by error messages so a user sees which operation of their model failed.
    """
    printer = _Printer()
    lines = printer.render(graph).splitlines()
    name = printer.names.get(node)
    line = next((ln for ln in lines if name is not None and ln.strip().startswith(f"%{name} =")), None)
    line = line or f"  {node.format_node()}"
    body = line.lstrip()
    marker = " " * (len(line) - len(body)) + "^" * min(len(body), 80)
    text = f"{line}\n{marker}"
    source = user_source(node)
    return f"{text}\n  from {source}" if source else text


def user_source(node: torch.fx.Node) -> str | None:
    """The innermost model-source frame of a node's ``stack_trace``, if recorded."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', trace)
    user = [f for f in frames if "/torch/" not in f[0]]
    if not user:
        return None
    path, lineno, func, code = user[-1]
    return f"{path}:{lineno} in {func}: {code.strip()}"
