"""`Graph`: the unit every pass reads and writes.

A `Graph` wraps an ATen-level `torch.fx.GraphModule` whose parameters and
buffers are attributes reached through ``get_attr`` nodes, the example inputs it
was captured with, and the facts that outlive one `optimize` call: the graph
properties passes have established (``bn-folded``, later ``calibrated``) and the
pipeline and trace that produced it. It stays runnable in eager PyTorch, which
is the reference oracle for every later stage.

Copies are deep: `copy()` clones the module, its parameters and the node
metadata, so a pass working on a copy can never reach the user's tensors.
`save_pt2` writes the graph as a torch.export program, which PyTorch loads
back with ``torch.export.load`` once fxpress's ops are registered (``import
fxpress`` registers them).
"""

from __future__ import annotations

import copy as _copy
import itertools
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx

from fxpress.errors import ExportError
from fxpress.ir.annotations import META_KEY
from fxpress.version import __version__


@dataclass(frozen=True)
class TraceRecord:
    """What one pass did: recorded by the pass manager, kept on the graph."""

    pipeline: str
    wall_s: float
    nodes_before: int
    nodes_after: int
    param_bytes_before: int
    param_bytes_after: int
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    drift: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pass": self.pipeline,
            "wall_s": round(self.wall_s, 6),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "param_bytes_before": self.param_bytes_before,
            "param_bytes_after": self.param_bytes_after,
            "modified": self.modified,
            "stats": {k: _jsonable(v) for k, v in self.stats.items()},
            "drift": self.drift,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class Graph:
    """A captured model: GraphModule + example inputs + properties + history."""

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        example_inputs: Sequence[torch.Tensor],
        *,
        dynamic_shapes: Any = None,
        properties: frozenset[str] = frozenset(),
        trace: Sequence[TraceRecord] = (),
        model_name: str = "model",
    ) -> None:
        self.gm = gm
        self.example_inputs = tuple(example_inputs)
        self.dynamic_shapes = dynamic_shapes
        self.properties = frozenset(properties)
        self.trace: list[TraceRecord] = list(trace)
        self.model_name = model_name

    # -- structure ---------------------------------------------------------
    @property
    def fx(self) -> torch.fx.Graph:
        return self.gm.graph

    def nodes(self, op: str | None = None) -> Iterator[torch.fx.Node]:
        """The nodes in order, optionally only those with the given `op` kind."""
        return (n for n in self.fx.nodes if op is None or n.op == op)

    @property
    def inputs(self) -> list[torch.fx.Node]:
        return list(self.nodes("placeholder"))

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.inputs]

    @property
    def output_node(self) -> torch.fx.Node:
        return next(n for n in reversed(self.fx.nodes) if n.op == "output")

    @property
    def num_ops(self) -> int:
        """The number of operator calls (the size measure the trace records)."""
        return sum(1 for _ in self.nodes("call_function"))

    @property
    def pipeline(self) -> str:
        """The pipeline text of every pass run on this graph so far, in order."""
        return ",".join(r.pipeline for r in self.trace)

    # -- parameters ----------------------------------------------------------
    def param(self, node_or_target: torch.fx.Node | str) -> torch.Tensor:
        """The tensor a ``get_attr`` node (or attribute path) refers to."""
        target = node_or_target.target if isinstance(node_or_target, torch.fx.Node) else node_or_target
        obj: Any = self.gm
        for part in str(target).split("."):
            obj = getattr(obj, part)
        return obj

    def params(self) -> dict[str, torch.Tensor]:
        """Every tensor referenced by a ``get_attr`` node, by attribute path."""
        return {str(n.target): self.param(n) for n in self.nodes("get_attr")}

    @property
    def param_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for t in self.params().values():
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    def add_param(
        self, hint: str, value: torch.Tensor, *, before: torch.fx.Node, buffer: bool = False
    ) -> torch.fx.Node:
        """Store `value` as a new (frozen) parameter and insert a ``get_attr`` node for it.

        The attribute gets a fresh name derived from `hint` (``conv.weight`` ->
        ``conv_weight_folded``), so nothing of the original model is overwritten.
        With ``buffer=True`` it is a buffer instead: a constant that trainers
        (which train ``parameters()``) leave alone, such as a fixed scale.
        """
        base = hint.replace(".", "_")
        name, i = base, 0
        while hasattr(self.gm, name):
            i += 1
            name = f"{base}_{i}"
        stored = value.detach().clone().contiguous()
        if buffer:
            self.gm.register_buffer(name, stored)
        else:  # a Parameter so that backends treat it as a weight
            self.gm.register_parameter(name, torch.nn.Parameter(stored, requires_grad=False))
        with self.fx.inserting_before(before):
            node = self.fx.get_attr(name)
        node.meta["val"] = value
        return node

    def replace_param(self, node_or_target: torch.fx.Node | str, value: torch.Tensor) -> None:
        """Store `value` under the attribute a ``get_attr`` node (or path) reads, keeping its kind.

        A parameter stays a (frozen) parameter, a buffer a buffer with its
        persistence, a plain tensor attribute (a lifted constant) plain. The
        value is copied, so the caller's tensor is never aliased.
        """
        target = node_or_target.target if isinstance(node_or_target, torch.fx.Node) else node_or_target
        owner_path, _, leaf = str(target).rpartition(".")
        owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
        value = value.detach().clone().contiguous()
        if leaf in owner._parameters:
            owner.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        elif leaf in owner._buffers:
            owner.register_buffer(leaf, value, persistent=leaf not in owner._non_persistent_buffers_set)
        else:
            setattr(owner, leaf, value)

    def drop_unused_params(self) -> int:
        """Erase unused ``get_attr`` nodes and delete the tensors no node refers to.

        Returns the bytes freed. Submodules left empty are deleted too.
        """
        for node in list(self.nodes("get_attr")):
            if not node.users:
                self.fx.erase_node(node)
        used = {str(n.target) for n in self.nodes("get_attr")}
        live = {id(self.param(name)) for name in used}  # a tied tensor still in use frees nothing
        freed = 0
        for name, tensor in list(itertools.chain(self.gm.named_parameters(), self.gm.named_buffers())):
            if name in used:
                continue
            owner, _, leaf = name.rpartition(".")
            module = self.gm.get_submodule(owner) if owner else self.gm
            delattr(module, leaf)
            if id(tensor) not in live:
                freed += tensor.numel() * tensor.element_size()
        for name, module in sorted(self.gm.named_modules(), key=lambda kv: -kv[0].count(".")):
            if name and not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
                self.gm.delete_submodule(name)
        return freed

    # -- running -------------------------------------------------------------
    def __call__(self, *inputs: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.gm(*inputs)

    def run_flat(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run eagerly and return the outputs as a flat list of tensors."""
        out = self(*inputs)
        return list(out) if isinstance(out, tuple | list) else [out]

    def recompile(self) -> None:
        """Regenerate the module's code after the fx graph was edited."""
        self.fx.lint()
        self.gm.recompile()

    def export(self) -> torch.export.ExportedProgram:
        """Re-export this graph (backends take an ExportedProgram)."""
        return torch.export.export(self.gm, self.example_inputs, dynamic_shapes=self.dynamic_shapes, strict=False)

    def save_pt2(self, path: str | os.PathLike[str]) -> Path:
        """Write this graph as a torch.export program (``torch.export.save``'s .pt2 archive); returns the path.

        ``torch.export.load(path).module()`` runs it in PyTorch; a pruned graph
        holds ATen ops only, an int8 or block-sparse one fxpress's own ops,
        which must be registered before loading: ``import fxpress`` does it
        (`fxpress.load_pt2` and `fxpress.capture` also take the file back as a
        Graph). The archive's ``extra/fxpress.json`` says so and records the
        pipeline that made the graph. Written beside `path` and renamed into
        place, so a failed save leaves no partial file.
        """
        path = Path(path)
        try:
            program = self.export()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"cannot save {self.model_name} as .pt2: torch.export could not re-export the graph "
                f"({type(exc).__name__}: {first}); the graph should run on its example inputs first"
            ) from exc
        ops = sorted({str(n.target) for n in self.nodes("call_function") if str(n.target).startswith("fxpress.")})
        info = {
            "saved_by": f"fxpress {__version__}",
            "pipeline": self.pipeline,
            "fxpress_ops": ops,
            "load": "import fxpress before torch.export.load: it registers the fxpress:: ops" if ops else "",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        try:
            torch.export.save(program, tmp, extra_files={"fxpress.json": json.dumps(info, indent=1)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    # -- copies and text -----------------------------------------------------
    def copy(self) -> Graph:
        """A deep copy: module, parameters, node metadata and history."""
        with warnings.catch_warnings():  # torch's pytree spec warns on deepcopy
            warnings.simplefilter("ignore", FutureWarning)
            gm = _copy.deepcopy(self.gm)
        for node in gm.graph.nodes:  # fx copies node.meta shallowly: give the copy its own annotation dicts
            if META_KEY in node.meta:
                node.meta[META_KEY] = dict(node.meta[META_KEY])
        return Graph(
            gm,
            self.example_inputs,
            dynamic_shapes=self.dynamic_shapes,
            properties=self.properties,
            trace=self.trace,
            model_name=self.model_name,
        )

    def __str__(self) -> str:
        from fxpress.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        props = ",".join(sorted(self.properties)) or "-"
        return (
            f"<fxpress.Graph {self.model_name}: {self.num_ops} ops, {self.param_bytes} param bytes, properties {props}>"
        )

    def verify(self) -> None:
        """Raise `VerifyError` unless the graph lints, types and shapes check."""
        from fxpress.ir.verify import verify

        verify(self)

    def propagate_shapes(self) -> None:
        """Recompute ``node.meta["val"]`` (fake tensors) for every node."""
        from fxpress.ir.shapes import propagate_shapes

        propagate_shapes(self)
