"""Per-layer methods and how a choice of one per layer becomes pipeline text.

A `Method` is a weight transform and a precision:

    transform  none | prune=R (prune-channels ratio R of its output channels)
               | sparse=N:M | sparse=RxC@D (sparsify: N:M, or RxC blocks at density D)
               | low-rank=R (low-rank ratio R)
    precision  float | bf16 (``cast-bf16``, only when registered) | int8 (static) | dynamic (per-row int8)

Observe quantizes the other quantizable ops too (attention's matmuls, residual
adds, concatenations) whenever some layer is int8: the "int8 rest", which
``Plan(quantize_rest=True)`` asks for with every layer float.

A `Plan` maps each layer's ident (`fxpress.auto.layers.Layer.ident`) to a
method, plus one weight bit width for every int8 layer (``observe``'s
``weight-bits`` is one option for the whole graph, so lower-bit weights are a
choice of the whole candidate). `pipeline_text` writes the plan as the
pipeline that reproduces it, passes in this order:

    fold-bn                                   (when the graph has batch norms)
    prune-channels{ratio=R,protected=[every layer not pruned at R]}   one per ratio
    low-rank{ratio=R,layers=^(?:a|b)$}        one per ratio
    sparsify{pattern=P,density=D,layers=...}  one per pattern
    observe{per-channel=true,skip=[float layers],dynamic=[dynamic layers]},calibrate,fold-qdq
    cast-bf16{layers=...}                     (bf16 layers; after quantization, which skips them)

`optimize_text` runs such text with ``calibrate`` fed the calibration data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from fxpress.auto.errors import AutoError
from fxpress.auto.layers import Layer
from fxpress.ir.graph import Graph
from fxpress.passes.calibrate import Calibrate
from fxpress.passes.manager import optimize
from fxpress.passes.registry import PASSES, parse_pipeline

BF16_PASS = "cast-bf16"
PRECISIONS = ("float", "bf16", "int8", "dynamic")
_TRANSFORM = re.compile(r"none|prune=(0?\.\d+)|sparse=(\d+:\d+|\d+x\d+@0?\.\d+)|low-rank=(0?\.\d+)")


@dataclass(frozen=True, order=True)
class Method:
    """One layer's choice: a weight transform and a precision (see the module docstring)."""

    transform: str = "none"
    precision: str = "float"

    def __post_init__(self) -> None:
        if not _TRANSFORM.fullmatch(self.transform):
            raise AutoError(
                f"unknown transform {self.transform!r}; write none, prune=0.25, sparse=2:4, sparse=16x1@0.5 "
                "or low-rank=0.5"
            )
        if self.precision not in PRECISIONS:
            raise AutoError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    @property
    def label(self) -> str:
        return self.precision if self.transform == "none" else f"{self.transform}+{self.precision}"

    @classmethod
    def parse(cls, label: str) -> Method:
        transform, _, precision = label.rpartition("+")
        return cls(transform or "none", precision)

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "dynamic")

    def prune_ratio(self) -> float | None:
        return float(self.transform.split("=")[1]) if self.transform.startswith("prune=") else None

    def applies(self, layer: Layer) -> str | None:
        """Why this method cannot apply to `layer` (None: it can)."""
        groups = layer.conv[3]
        reduce = layer.weight_count // layer.out_channels  # inputs per output (conv: I/groups * kh * kw)
        if self.precision == "dynamic" and layer.op != "linear":
            return "dynamic int8 is for linears"
        if self.precision == "bf16" and BF16_PASS not in PASSES:
            return f"no {BF16_PASS} pass is registered"
        if self.transform.startswith(("prune=", "low-rank=")) and groups != 1:
            return "grouped or depthwise conv"
        if self.transform.startswith("sparse="):
            pattern = self.transform.split("=")[1].split("@")[0]
            if ":" in pattern and reduce % int(pattern.split(":")[1]):
                return f"{reduce} inputs per output are not a multiple of {pattern.split(':')[1]}"
            if "x" in pattern:
                rows, cols = (int(v) for v in pattern.split("x"))
                if layer.out_channels % rows or reduce % cols:
                    return f"weight {list(layer.weight_shape)} does not divide into {pattern} blocks"
        return None


def default_methods(*, bf16: bool | None = None) -> list[Method]:
    """Every method the search tries by default (bf16 only when ``cast-bf16`` is registered)."""
    precisions = ["float", "int8", "dynamic"] + (["bf16"] if (BF16_PASS in PASSES if bf16 is None else bf16) else [])
    transforms = ["none", "prune=0.25", "sparse=2:4", "sparse=16x1@0.5", "low-rank=0.5"]
    return [Method(t, p) for t in transforms for p in precisions]


@dataclass(frozen=True)
class Plan:
    """A method per layer ident, and the weight bit width of every int8 layer."""

    methods: Mapping[str, Method] = field(default_factory=dict)
    weight_bits: int = 8
    quantize_rest: bool = False  # observe the other quantizable ops (attention matmuls, adds) even with no int8 layer

    def key(self) -> tuple[tuple[tuple[str, str], ...], int, bool]:
        return tuple(sorted((k, m.label) for k, m in self.methods.items())), self.weight_bits, self.quantize_rest

    def with_method(self, ident: str, method: Method) -> Plan:
        return replace(self, methods={**self.methods, ident: method})


def union(idents: Iterable[str]) -> str:
    """One regex fully matching each ident and nothing else."""
    return "^(?:" + "|".join(re.escape(i) for i in sorted(idents)) + ")$"


def _by(plan: Plan, layers: Sequence[Layer], pick: str) -> dict[str, list[str]]:
    """Idents grouped by the transform value of kind `pick` (prune / sparse / low-rank)."""
    out: dict[str, list[str]] = {}
    for layer in layers:
        m = plan.methods.get(layer.ident, Method())
        kind, _, value = m.transform.partition("=")
        if kind == pick:
            out.setdefault(value, []).append(layer.ident)
    return out


def pipeline_text(plan: Plan, layers: Sequence[Layer], *, fold_bn: bool = False, reduce_range: bool = False) -> str:
    """The pipeline text that applies `plan` to a graph holding `layers` (see the module docstring).

    `reduce_range`: 7-bit weights (``weight-reduce-range``) where the target prefers them and the plan keeps 8.
    """
    items = ["fold-bn"] if fold_bn else []
    idents = [layer.ident for layer in layers]
    for ratio, names in sorted(_by(plan, layers, "prune").items()):
        others = [i for i in idents if i not in names]
        protected = f",protected=[{','.join(others)}]" if others else ""
        items.append(f"prune-channels{{ratio={ratio}{protected}}}")
    for ratio, names in sorted(_by(plan, layers, "low-rank").items()):
        items.append(f"low-rank{{ratio={ratio},layers={union(names)}}}")
    for spec, names in sorted(_by(plan, layers, "sparse").items()):
        pattern, _, density = spec.partition("@")
        items.append(f"sparsify{{pattern={pattern}{f',density={density}' if density else ''},layers={union(names)}}}")
    chosen = {layer.ident: plan.methods.get(layer.ident, Method()) for layer in layers}
    if plan.quantize_rest or any(m.quantized for m in chosen.values()):
        options = ["per-channel=true"]
        if plan.weight_bits < 8:
            options.append(f"weight-bits={plan.weight_bits}")
        elif reduce_range:
            options.append("weight-reduce-range=true")
        skip = [f"^{re.escape(i)}$" for i, m in chosen.items() if not m.quantized]
        dynamic = [f"^{re.escape(i)}$" for i, m in chosen.items() if m.precision == "dynamic"]
        if skip:
            options.append(f"skip=[{','.join(skip)}]")
        if dynamic:
            options.append(f"dynamic=[{','.join(dynamic)}]")
        items += [f"observe{{{','.join(options)}}}", "calibrate", "fold-qdq"]
    bf16 = [i for i, m in chosen.items() if m.precision == "bf16"]
    if bf16:
        items.append(f"{BF16_PASS}{{layers={union(bf16)}}}")
    return ",".join(items)


def optimize_text(graph: Graph, text: str, calibration: Sequence[tuple[torch.Tensor, ...]]) -> Graph:
    """`fxpress.optimize(graph, text)` with every ``calibrate`` fed `calibration` (the graph is not changed)."""
    passes = [replace(p, data=list(calibration)) if isinstance(p, Calibrate) else p for p in parse_pipeline(text)]
    return optimize(graph, passes)
