"""Capture: an `nn.Module` and example inputs -> an ATen-level `Graph`.

Uses ``torch.export`` (non-strict) on a deep copy of the model in eval mode, so
the user's module, its mode and its tensors are never touched. The exported
program is unlifted (parameters become ``get_attr`` nodes), export's guard
check call is removed, and the graph is verified before it is returned.

When export fails, the error is turned into a `CaptureError` that names the
construct (data-dependent control flow, an unsupported input, ...) and the
line of the user's model that caused it, and says what to change.

A model can also come from a file: `capture` (and `load_pt2`) take the path of
a program saved with ``torch.export.save`` (``.pt2``), so a training job can
hand its model over without its Python classes. Its own example inputs and
dynamic dimensions are kept; the operators it names must be registered first
(fxpress's own are: ``import fxpress`` registers them), and an unregistered
one is reported by name, with the library to import, before torch tries.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import re
import traceback
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fxpress.errors import CaptureError, ExportError
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


def _check_signature(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Refuse, before torch.export runs, a forward() the positional example inputs cannot call.

    fxpress graphs (and compiled modules) take positional tensors: a keyword-only parameter with a default
    is captured at that default; one without a default, or a count of inputs forward() cannot bind, gets an
    error that says what to change instead of torch.export's trace through inspect.
    """
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return  # a builtin or C forward: let torch.export judge
    params = list(sig.parameters.values())
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    name = type(model).__name__
    if required_kw:
        raise CaptureError(
            f"{name}.forward() takes keyword-only argument(s) {required_kw} without a default; fxpress captures "
            "positional tensor inputs: give them defaults, or wrap the model in a module whose forward takes "
            f"them positionally and passes {', '.join(f'{k}={k}' for k in required_kw)}"
        )
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    needed = [p.name for p in positional if p.default is p.empty]
    if len(inputs) < len(needed) or len(inputs) > len(positional):
        raise CaptureError(
            f"{name}.forward{sig} takes {len(needed)} to {len(positional)} positional input(s) "
            f"({[p.name for p in positional]}), but {len(inputs)} example input(s) were given"
            if len(needed) != len(positional)
            else f"{name}.forward{sig} takes {len(positional)} positional input(s) ({[p.name for p in positional]}), "
            f"but {len(inputs)} example input(s) were given"
        )


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
    model: torch.nn.Module | str | os.PathLike[str],
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    dynamic_shapes: Any = None,
) -> Graph:
    """Capture `model` (in eval mode, on a copy) as an fxpress `Graph`.

    `dynamic_shapes` is passed to ``torch.export.export`` as is, e.g.
    ``({0: torch.export.Dim("batch")},)`` for a dynamic batch size. A path to a
    saved torch.export program (``.pt2``) is read with `load_pt2` instead.
    """
    if isinstance(model, os.PathLike) or (isinstance(model, str) and model.endswith(".pt2")):
        if dynamic_shapes is not None:
            raise CaptureError("a .pt2 program keeps the dynamic dimensions it was exported with; drop dynamic_shapes")
        return load_pt2(model, example_inputs)
    if isinstance(model, str):
        raise CaptureError(f"model must be a torch.nn.Module, got str {model!r} (a saved program's path ends in .pt2)")
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise CaptureError(f"capturing a {type(model).__name__} needs example_inputs (a tensor or a tuple of them)")
    inputs = _check_inputs(example_inputs)
    _check_signature(model, inputs)
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


_OP_TARGET = re.compile(r"torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")


def _unregistered_ops(path: Path) -> tuple[list[str], dict[str, Any]]:
    """The ``namespace::op`` names the archive's programs call that torch cannot resolve here, and fxpress's note."""
    names: set[tuple[str, str, str]] = set()
    note: dict[str, Any] = {}
    with zipfile.ZipFile(path) as archive:
        for entry in archive.namelist():
            if entry.endswith("extra/fxpress.json"):
                note = json.loads(archive.read(entry))
            elif entry.endswith(".json") and "/models/" in f"/{entry}":
                names.update(_OP_TARGET.findall(archive.read(entry).decode("utf-8", "replace")))
    missing = []
    for namespace, op, overload in sorted(names):
        try:
            getattr(getattr(getattr(torch.ops, namespace), op), overload)
        except (AttributeError, RuntimeError):
            missing.append(f"{namespace}::{op}")
    return sorted(set(missing)), note


def _missing_ops_message(path: Path, missing: list[str], note: dict[str, Any]) -> str:
    ours = [m for m in missing if m.startswith("fxpress::")]
    theirs = [m for m in missing if not m.startswith("fxpress::")]
    lines = [f"{path} calls operators that are not registered here: {', '.join(missing)}"]
    if ours:
        saved_by = note.get("saved_by", "an unknown fxpress")
        lines.append(
            f"  fxpress's ops are registered by `import fxpress` (torch must be importable then); this fxpress "
            f"defines no {', '.join(ours)}: the file was saved by {saved_by}, install that version or newer"
        )
    if theirs:
        namespaces = sorted({m.split("::")[0] for m in theirs})
        lines.append(
            f"  import the library that defines the {', '.join(namespaces)} operators (its torch.library "
            "registrations) before loading"
        )
    return "\n".join(lines)


def _dynamic_shapes(program: torch.export.ExportedProgram) -> Any:
    """The `dynamic_shapes` spec that re-exports `program` with the same dynamic dimensions (None: all static)."""
    users = set(program.graph_signature.user_inputs)
    dims: dict[str, Any] = {}
    spec: list[dict[int, Any] | None] = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in users:
            continue
        val = node.meta.get("val")
        shape = val.shape if isinstance(val, torch.Tensor) else ()
        entry: dict[int, Any] = {}
        for i, size in enumerate(shape):
            if isinstance(size, int):
                continue
            expr = size.node.expr
            if not expr.is_Symbol:  # a derived size (2 * s0): let export find it again
                entry[i] = torch.export.Dim.AUTO
                continue
            if str(expr) not in dims:
                bounds = program.range_constraints.get(expr)
                lower = int(bounds.lower) if bounds is not None else 0
                upper = bounds.upper if bounds is not None else None
                kwargs = {"min": lower} if lower > 2 else {}
                if upper is not None and math.isfinite(float(upper)):  # torch's int_oo claims is_finite
                    kwargs["max"] = int(upper)
                dims[str(expr)] = torch.export.Dim(str(expr), **kwargs)
            entry[i] = dims[str(expr)]
        spec.append(entry or None)
    return tuple(spec) if any(e is not None for e in spec) else None


def load_pt2(
    path: str | os.PathLike[str], example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None
) -> Graph:
    """A `Graph` from a program saved with ``torch.export.save`` (a ``.pt2`` file), as `capture` gives one.

    The program's saved example inputs are the graph's unless `example_inputs`
    is given; its dynamic dimensions (and their ranges) become the graph's
    `dynamic_shapes`. Export the model in eval mode and before
    ``run_decompositions``: the passes look for ``aten.linear``,
    ``aten.conv2d`` and the other ops ``torch.export.export`` leaves whole.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"{path} does not exist (a .pt2 file written by torch.export.save)")
    try:
        missing, note = _unregistered_ops(path)
    except (zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not a torch.export archive (.pt2): {exc}") from exc
    if missing:
        raise ExportError(_missing_ops_message(path, missing, note))
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ExportError(
            f"torch.export.load could not read {path} ({type(exc).__name__}: {str(exc).strip()[:300]}); "
            "was it written by torch.export.save with this torch version or an older one?"
        ) from exc
    if example_inputs is None:
        saved = program.example_inputs
        if saved is None:
            raise ExportError(f"{path} holds no example inputs: pass example_inputs (or --input-shape on the CLI)")
        args, kwargs = saved
        if kwargs:
            raise ExportError(f"{path} takes keyword inputs {sorted(kwargs)}; fxpress graphs take positional tensors")
        example_inputs = args
    inputs = _check_inputs(example_inputs)
    expected = len(program.graph_signature.user_inputs)
    if len(inputs) != expected:
        raise CaptureError(f"{path} takes {expected} inputs, {len(inputs)} example inputs were given")
    gm = program.module()
    _strip_guards(gm)
    for p in gm.parameters():
        p.requires_grad_(False)
    graph = Graph(
        gm,
        [x.detach().clone() for x in inputs],
        dynamic_shapes=_dynamic_shapes(program),
        model_name=path.stem,
    )
    graph.verify()
    return graph
