"""Capture: an `nn.Module` and example inputs -> an ATen-level `Graph`.

Uses ``torch.export`` (non-strict) on a deep copy of the model in eval mode, so
the user's module, its mode and its tensors are never touched. The exported
program is unlifted (parameters become ``get_attr`` nodes), export's guard
check call is removed, and the graph is verified before it is returned.

When export fails, the error is turned into a `CaptureError` that names the
construct (data-dependent control flow, an unsupported input, ...) and the
line of the user's model that caused it, and says what to change.
"""

from __future__ import annotations

import copy
import re
import traceback
from collections.abc import Sequence
from typing import Any

import torch

from fxpress.errors import CaptureError
from fxpress.ir.graph import Graph

_HINTS = (
    (
        ("data-dependent", "GuardOnDataDependentSymNode", "Could not guard on data-dependent"),
        "data-dependent control flow (Python `if`/`while` on a tensor's value)",
        "torch.export needs one graph for every input: replace the branch with torch.where "
        "or torch.cond, or move it out of forward()",
    ),
    (
        ("Constraints violated", "ConstraintViolation"),
        "the dynamic_shapes spec conflicts with the model",
        "make the dimensions you mark dynamic really free in the model, or mark fewer of them",
    ),
    (
        ("Unsupported", "unsupported"),
        "an operation torch.export does not support",
        "rewrite that part of forward() with plain tensor operations",
    ),
)


def _user_line(exc: BaseException) -> str | None:
    text = str(exc)
    m = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', text)
    if m:
        return f"{m.group(1)}:{m.group(2)} in {m.group(3)}: {m.group(4).strip()}"
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<") and "/torch/" not in f.filename and "/fxpress/" not in f.filename
    ]
    if frames:
        f = frames[-1]
        return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
    return None


def _describe(model: torch.nn.Module, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    what, todo = "an error inside torch.export", "see the cause below; fix the model or its example inputs"
    for needles, w, t in _HINTS:
        if any(n in text for n in needles):
            what, todo = w, t
            break
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = _user_line(exc)
    at = f"\n  at {where}" if where else ""
    return f"cannot capture {type(model).__name__}: {what}{at}\n  torch.export said: {first}\n  what to do: {todo}"


def _check_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, Sequence) or isinstance(example_inputs, str):
        raise CaptureError(
            f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
        )
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise CaptureError(
                f"example input {i} is a {type(x).__name__}, not a torch.Tensor: fxpress captures models "
                "whose forward() takes tensors only; bind other arguments (flags, sizes) in a wrapper module"
            )
    return tuple(example_inputs)


def _strip_guards(gm: torch.fx.GraphModule) -> None:
    """Remove export's ``_guards_fn`` input check: the IR holds operator calls only."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            gm.graph.erase_node(node)
    for name, _ in list(gm.named_children()):
        if name.startswith("_guards_fn"):
            gm.delete_submodule(name)
    gm.recompile()


def capture(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    dynamic_shapes: Any = None,
) -> Graph:
    """Capture `model` (in eval mode, on a copy) as an fxpress `Graph`.

    `dynamic_shapes` is passed to ``torch.export.export`` as is, e.g.
    ``({0: torch.export.Dim("batch")},)`` for a dynamic batch size.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _check_inputs(example_inputs)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    try:
        ep = torch.export.export(frozen, inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise CaptureError(_describe(model, exc)) from exc
    gm = ep.module()
    _strip_guards(gm)
    graph = Graph(
        gm, [x.detach().clone() for x in inputs], dynamic_shapes=dynamic_shapes, model_name=type(model).__name__
    )
    graph.verify()
    return graph
