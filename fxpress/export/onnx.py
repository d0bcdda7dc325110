"""`to_onnx`: any fxpress graph (float, pruned, sparsified, int8) as a standard ONNX model.

The graph is first rewritten into standard PyTorch ops (`fxpress.export.standard`:
int8 ops as QuantizeLinear / DequantizeLinear around the float op, per-channel
weight scales on axis 0, the calibrated activation scales and zero points),
then exported by torch.onnx's own exporter (``torch.onnx.export(...,
dynamo=True)``: torch.export, then onnxscript's ATen and
``quantized_decomposed`` translations, then its optimizer, which keeps Q/DQ
nodes). So every ATen op the exporter knows exports, and the int8 layers come
out in the QDQ form ONNX Runtime fuses into QGemm / QLinearConv /
MatMulIntegerToFloat and OpenVINO into its u8/i8 kernels.

Why not build the ONNX graph node by node from the fx graph: that would mean
re-implementing torch.onnx's translations of every ATen op a model holds (a
transformer's embedding, layer norm, GELU, softmax, masks), where the
rewrite only has to say what fxpress's eleven ops are in torch's terms.

The result is an `OnnxExport` report: how each fxpress op was written, which
int8 scales the graph did not fix (`fxpress.export.scales`), the opset and the
time. Ops without an ONNX form but with a float equivalent (per-row dynamic
int8, block-sparse) are written as float and listed; an op with neither is an
`ExportError` naming its node, raised before anything is written. The file is
written beside `path`, checked with ``onnx.checker`` and renamed into place
(weights over 1 GiB go to ``<path>.data``, written in place).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fxpress.errors import ExportError
from fxpress.export.standard import Rewritten, standard_graph
from fxpress.ir.graph import Graph
from fxpress.progress import enabled, step

_EXTERNAL_DATA_BYTES = 1 << 30  # a protobuf holds at most 2 GiB: bigger weights go to a .data file beside the model


@dataclass
class OnnxExport:
    """What `to_onnx` wrote and how: the report the CLI prints."""

    path: Path
    opset: int
    activations: str
    nodes: list[Rewritten] = field(default_factory=list)
    chosen_scales: list[str] = field(default_factory=list)
    float_ops: int = 0
    export_s: float = 0.0

    @property
    def forms(self) -> dict[str, int]:
        """How many fxpress ops were written in each form."""
        return dict(Counter(n.form for n in self.nodes))

    @property
    def substituted(self) -> list[Rewritten]:
        """The fxpress ops with no ONNX form, written as float ops that compute the same."""
        return [n for n in self.nodes if n.substituted]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "activations": self.activations,
            "forms": self.forms,
            "nodes": [{"node": n.node, "op": n.op, "form": n.form, "substituted": n.substituted} for n in self.nodes],
            "chosen_scales": self.chosen_scales,
            "float_ops": self.float_ops,
            "export_s": round(self.export_s, 3),
        }

    def __str__(self) -> str:
        lines = [f"wrote {self.path} (ONNX opset {self.opset}, {self.export_s:.1f} s)"]
        lines.append(f"  {self.float_ops} ATen ops exported as they are")
        shown = {k: v for k, v in self.forms.items() if k not in ("QuantizeLinear", "DequantizeLinear")}
        for form, count in shown.items():
            lines.append(f"  {count:4} x {form}")
        qdq = sum(v for k, v in self.forms.items() if k in ("QuantizeLinear", "DequantizeLinear"))
        if qdq:
            lines.append(f"  {qdq:4} x fxpress quantize / dequantize -> QuantizeLinear / DequantizeLinear")
            lines.append(f"  int8 activations written as {self.activations}")
        for n in self.substituted:
            lines.append(f"  no ONNX form: {n.node} ({n.op}) -> {n.form}")
        if self.chosen_scales:
            lines.append(
                f"  {len(self.chosen_scales)} int8 values between integer ops had no scale in the graph "
                f"(only requantization multipliers); scales chosen, same integers: {', '.join(self.chosen_scales[:6])}"
                + (", ..." if len(self.chosen_scales) > 6 else "")
            )
        return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _output_names(graph: Graph) -> list[str]:
    outputs = graph.output_node.args[0]
    count = len(outputs) if isinstance(outputs, tuple | list) else 1
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx's progress prints, warnings and log lines (torchvision's missing ops) off the console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(std: Graph, tmp: Path, opset: int | None, external: bool) -> None:
    """torch.onnx's dynamo exporter on the standard-ops graph, writing `tmp`."""
    with _quiet():
        torch.onnx.export(
            std.gm,
            std.example_inputs,
            str(tmp),
            dynamo=True,
            dynamic_shapes=std.dynamic_shapes,
            input_names=std.input_names,
            output_names=_output_names(std),
            opset_version=opset,
            external_data=external,
            optimize=True,
            verbose=False,
        )


def to_onnx(
    graph: Graph,
    path: str | os.PathLike[str],
    *,
    activations: str = "uint8",
    opset: int | None = None,
    progress: bool | None = None,
) -> OnnxExport:
    """Write `graph` as an ONNX model at `path`; int8 ops in QDQ form (see the module doc).

    `activations`: how int8 activations are typed in the file: ``uint8``
    (default; zero point + 128, the same real values, what ONNX Runtime's x86
    convolutions take) or ``int8`` (fxpress's own values). `opset`: the ONNX
    opset (default: torch.onnx's). The inputs are the graph's inputs by name,
    its dynamic dimensions stay dynamic. `progress`: report each step (rewrite,
    torch.onnx export, check) on stderr; default ``FXPRESS_PROGRESS``, else
    whether stderr is a terminal (fxpress.progress).
    """
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from exc
    path = Path(path)
    start = time.perf_counter()
    show = enabled(progress)
    with step("rewrite to standard ops", show):
        standard = standard_graph(graph, activations)
    std = standard.graph
    path.parent.mkdir(parents=True, exist_ok=True)
    external = std.param_bytes > _EXTERNAL_DATA_BYTES
    # the weights file is named after the model, so a model with external weights is written in place
    tmp = path if external else path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with step("torch.onnx export", show):
            _export(std, tmp, opset, external)
        with step("onnx check", show):
            onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        raise ExportError(
            f"torch.onnx could not export {graph.model_name} ({type(exc).__name__}: {_first_line(exc)}); "
            "where it names an ATen op, that op has no ONNX translation in this torch / onnxscript"
        ) from exc
    finally:
        if tmp != path:
            tmp.unlink(missing_ok=True)
    imports = onnx.load(str(path), load_external_data=False).opset_import
    opset_used = next((o.version for o in imports if o.domain in ("", "ai.onnx")), opset or 0)
    float_ops = sum(1 for n in graph.nodes("call_function") if not str(n.target).startswith("fxpress."))
    return OnnxExport(
        path,
        int(opset_used),
        activations,
        standard.nodes,
        standard.chosen_scales,
        float_ops,
        time.perf_counter() - start,
    )
