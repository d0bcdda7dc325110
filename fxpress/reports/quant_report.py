"""quant-report: how much int8 costs each layer, worst first, before anything is compiled.

    report = quant_report(model, batches)   # passes="int8": the registry's fold-bn,observe{per-channel=true},calibrate,fold-qdq
    print(report.text())     # one row per quantizable layer, worst first; then what stays float
    report.to_json()         # the same as JSON-ready data

The pipeline runs up to ``fold-qdq`` with ``calibrate`` fed `data` (added at
the end when the text has none), then ``fold-qdq`` (and what follows it) on a
copy. A *layer* is an op ``observe`` treats as quantizable (linear, conv2d,
matmul, bmm, add, cat) whose output it observed; it is *int8* when ``fold-qdq``
turned it into an integer kernel. The reference is the calibrated graph run in
float (so the numbers measure quantization only). On every batch, in float64:

- ``sqnr_db`` / ``cosine``: the layer's output with only this layer
  quantized (its inputs, weight and output fake-quantized with the calibrated
  parameters, the rest float): the error it adds by itself;
- ``model_sqnr_db`` / ``model_cosine``: the model's output in that same run:
  its *sensitivity*, what keeping it in float would win back; rows are sorted
  by it, worst first, int8 layers before those that stay float anyway (a
  float layer's numbers say what quantizing it would cost: an attention-mask
  add keeps its output SQNR, dominated by the mask's -inf-like entries, yet
  ruins the model's);
- ``cumulative_sqnr_db`` / ``cumulative_cosine``: the layer's output with
  every int8 layer quantized: the error that has built up by then.

- ``weight_sqnr_db``: the layer's constant weight against its quantized
  values (None for a layer without one: an add, an attention matmul).

Weight schemes: ``weight_scheme`` / ``weight_bits`` (``--weight-scheme``,
``--weight-bits``) override the ``observe`` pass's options, so
``quant_report(m, data, weight_scheme="log", weight_bits=4)`` measures the
int8 pipeline with 4-bit log-level weights (zero and +-2^k x scale, see
`fxpress.quant.scheme`). ``compare_weights="log"`` (or ``"uniform"``) adds,
per layer, what its weight would give under the other levels at the same bit
width (the same per-channel choice and observer rule): ``compare_weight_sqnr_db``
(the weight alone) and ``compare_sqnr_db`` (the layer's output with only this
layer quantized, its weight under the compared scheme): the uniform and log
columns side by side, for choosing levels per layer. It costs one more run
per layer and batch.

bf16: ``bf16=True`` (``--bf16``) adds, per linear or conv2d with a constant weight, what
computing it in bfloat16 instead would cost (``cast-bf16``: input and weight
rounded to bf16, float32 sums, the rest of the model float):
``bf16_sqnr_db`` at the layer's output and ``bf16_model_cosine`` at the
model's, the columns to choose int8, bf16 or float per layer by.

SQNR is ``10 log10(sum ref^2 / sum (ref - q)^2)`` and cosine is taken over all
batches and elements together (``inf`` dB, ``null`` in JSON: no error at all). The whole model's
numbers (``model_sqnr_db`` on the report) come from the folded int8 graph
itself, run with fxpress's integer reference ops; fake quantization agrees with
it to one output step (int32 bias and fixed-point rounding). ``float_ops``
lists the quantizable ops that stay float and why (skipped by ``observe``,
no integer kernel in ``fold-qdq``, ...): correct, not faster. To keep a layer
in float, skip it by name: ``observe{skip=[fc2]}`` (regexes searched in node
names and module paths, the ``layer`` and ``module`` columns).

Cost per batch: one float run, one with every int8 layer quantized, the int8
graph, and per layer one run from that layer on (the float values before it
are reused; from the start when the graph has in-place ops), so `limit`
matters on big models (MiniLM, 4 batches of 8 x 64 tokens, 69 layers: under
3 minutes on one core).

This module sits in the reports layer, above the passes (it runs them); the
user's model and graph are never changed.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from fxpress.errors import InputError
from fxpress.ir.annotations import get
from fxpress.ir.capture import capture
from fxpress.ir.graph import Graph
from fxpress.ir.ops import bf16_round
from fxpress.ir.opsets import module_path
from fxpress.ir.properties import Property
from fxpress.passes.base import Pass
from fxpress.passes.calibrate import Calibrate
from fxpress.passes.fold_qdq import FoldQDQ
from fxpress.passes.manager import optimize
from fxpress.passes.observe import Observe
from fxpress.passes.pipeline import as_passes
from fxpress.passes.registry import PIPELINES, REGISTRY
from fxpress.quant.annotations import QuantParams
from fxpress.quant.opsets import QUANTIZABLE
from fxpress.quant.scheme import LEVELS

DEFAULT_PIPELINE = "int8"  # the registry's named pipeline: fold-bn,observe{per-channel=true},calibrate,fold-qdq


class _Error:
    """Sums for SQNR and cosine between a reference and its quantized version, over many batches."""

    def __init__(self) -> None:
        self.ref2 = self.q2 = self.dot = self.noise = 0.0

    def add(self, ref: torch.Tensor, q: torch.Tensor) -> None:
        r, x = ref.detach().double().reshape(-1), q.detach().double().reshape(-1)
        self.ref2 += float(r @ r)
        self.q2 += float(x @ x)
        self.dot += float(r @ x)
        self.noise += float((r - x) @ (r - x))

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(self.ref2 / self.noise) if self.ref2 > 0.0 else -math.inf

    @property
    def cosine(self) -> float:
        if self.ref2 == 0.0 or self.q2 == 0.0:
            return 1.0 if self.ref2 == self.q2 else 0.0
        return self.dot / math.sqrt(self.ref2 * self.q2)


def _fake(node: torch.fx.Node, value: Any, override: dict[torch.fx.Node, QuantParams] | None = None) -> Any:
    p = override[node] if override and node in override else get(node, QuantParams.key)
    if isinstance(p, QuantParams) and isinstance(value, torch.Tensor) and value.is_floating_point():
        return p.fake_quantize(value)
    return value


def _flat(out: Any) -> torch.Tensor:
    """The model's float outputs, flattened into one float64 vector."""
    leaves = [t.reshape(-1).double() for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.cat(leaves) if leaves else torch.zeros(0, dtype=torch.float64)


class _FakeQuant(torch.fx.Interpreter):
    """Runs the graph in float, fake-quantizing the operands and output of `layers`; keeps `watch`'s outputs.

    `override` gives some operands (weights) other parameters than their annotations. `bf16`
    layers instead run ``cast-bf16``'s arithmetic: input and weight rounded to bf16, float32 out.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        layers: Collection[torch.fx.Node],
        watch: Collection[torch.fx.Node],
        override: dict[torch.fx.Node, QuantParams] | None = None,
        bf16: Collection[torch.fx.Node] = (),
    ):
        super().__init__(gm)
        self.layers, self.watch, self.override = set(layers), set(watch), override or {}
        self.bf16 = set(bf16)
        self.seen: dict[torch.fx.Node, Any] = {}
        self.extra_traceback = False

    def run_node(self, n: torch.fx.Node) -> Any:
        if n in self.bf16:  # y = linear(bf16(x), bf16(w), b)
            x, w, *rest = torch.fx.node.map_arg(n.args, lambda a: self.env[a])
            assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
            out = n.target(bf16_round(x), bf16_round(w), *rest)  # type: ignore[operator]
        elif n in self.layers:  # y = q(op(q(x), q(w)))
            args = torch.fx.node.map_arg(n.args, lambda a: _fake(a, self.env[a], self.override))
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: _fake(a, self.env[a], self.override))
            out = _fake(n, n.target(*args, **kwargs))  # type: ignore[operator]
        else:
            out = super().run_node(n)
        if n in self.watch:
            self.seen[n] = out.detach().clone()  # before an in-place op can change it
        return out


@dataclass
class LayerRow:
    """One quantizable layer's error (see the module docstring for each number)."""

    name: str
    op: str
    module: str
    int8: bool
    sqnr_db: float
    cosine: float
    model_sqnr_db: float
    model_cosine: float
    cumulative_sqnr_db: float
    cumulative_cosine: float
    weight_sqnr_db: float | None = None
    compare_weight_sqnr_db: float | None = None
    compare_sqnr_db: float | None = None
    bf16_sqnr_db: float | None = None
    bf16_model_cosine: float | None = None


@dataclass
class FloatOp:
    """A quantizable op the pipeline leaves in float, and why."""

    name: str
    op: str
    module: str
    reason: str


def skip_pattern(row: LayerRow, rows: Sequence[LayerRow]) -> str:
    """A regex for ``observe{skip=[...]}`` that picks `row` and no other layer: its module path, else its name."""
    for pattern in (row.module, f"^{row.name}$"):
        others = [r for r in rows if r is not row and any(re.search(pattern, s) for s in (r.name, r.module) if s)]
        if pattern and not others:
            return pattern
    return f"^{row.name}$"


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) and x > 0 else f"{x:.1f}"


def _json_num(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else round(x, 6)  # null: no error at all (or no weight)


@dataclass
class QuantReport:
    """Per-layer quantization error of a graph on calibration data (see the module docstring)."""

    model: str
    pipeline: str
    batches: int
    model_sqnr_db: float
    model_cosine: float
    rows: list[LayerRow] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)
    compare_weights: str | None = None
    bf16: bool = False

    def text(self) -> str:
        head: tuple[str, ...] = ("layer", "op", "module", "kernel", "SQNR dB", "cosine", "model SQNR", "model cos")
        head += ("cumul SQNR", "w SQNR")
        if self.compare_weights:
            head += (f"w SQNR {self.compare_weights}", f"SQNR {self.compare_weights}")
        if self.bf16:
            head += ("bf16 SQNR", "bf16 model cos")
        body = []
        for r in self.rows:
            cells: tuple[str, ...] = (r.name, r.op, r.module or "-", "int8" if r.int8 else "float")
            cells += (_db(r.sqnr_db), f"{r.cosine:.5f}", _db(r.model_sqnr_db), f"{r.model_cosine:.5f}")
            cells += (_db(r.cumulative_sqnr_db), _db(r.weight_sqnr_db))
            if self.compare_weights:
                cells += (_db(r.compare_weight_sqnr_db), _db(r.compare_sqnr_db))
            if self.bf16:
                cos = "-" if r.bf16_model_cosine is None else f"{r.bf16_model_cosine:.6f}"
                cells += (_db(r.bf16_sqnr_db), cos)
            body.append(cells)
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [
            f"quant-report {self.model}: {self.pipeline} on {self.batches} batches",
            f"model output (int8 graph vs float): SQNR {_db(self.model_sqnr_db)} dB, cosine {self.model_cosine:.5f}",
            "layers, worst first (SQNR/cosine: this layer alone quantized, at its output and the model's; "
            "cumul: every int8 layer quantized; w: the weight alone)",
        ]
        if self.compare_weights:
            lines.append(
                f"'{self.compare_weights}' columns: the same layer with its weight on {self.compare_weights} levels "
                "at the same bit width"
            )
        if self.bf16:
            lines.append("bf16 columns: the same layer computed in bfloat16 instead (cast-bf16), the rest float")
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
        if self.float_ops:
            lines.append("left in float:")
            lines += [f"  {f.name} ({f.op}, {f.module or '-'}): {f.reason}" for f in self.float_ops]
        if self.rows and self.rows[0].int8:
            pattern = skip_pattern(self.rows[0], self.rows)
            lines.append(f"to keep the worst int8 layer in float, skip it by name: observe{{skip=[{pattern}]}}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def to_json(self) -> dict[str, Any]:
        def row(r: LayerRow) -> dict[str, Any]:
            return {k: _json_num(v) if isinstance(v, float) else v for k, v in asdict(r).items()}

        return {
            "model": self.model,
            "pipeline": self.pipeline,
            "batches": self.batches,
            "model_sqnr_db": _json_num(self.model_sqnr_db),
            "model_cosine": _json_num(self.model_cosine),
            "layers": [row(r) for r in self.rows],
            "float_ops": [asdict(f) for f in self.float_ops],
            "compare_weights": self.compare_weights,
            "bf16": self.bf16,
        }


def _split(passes: list[Pass], data: list[tuple[torch.Tensor, ...]]) -> tuple[list[Pass], list[Pass]]:
    """(passes up to calibration, with calibrate fed `data`; fold-qdq and what follows it)."""
    cut = next((i for i, p in enumerate(passes) if isinstance(p, FoldQDQ)), len(passes))
    before = [replace(p, data=data) if isinstance(p, Calibrate) else p for p in passes[:cut]]
    if not any(isinstance(p, Calibrate) for p in before):
        before.append(Calibrate(data=data))
    return before, passes[cut:] or [FoldQDQ()]


def _operands(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(node.args, found.append)
    return found


def _is_layer_op(node: torch.fx.Node) -> bool:
    """A float op with two or more tensor operands (``x + 1`` is not an add of two tensors)."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point() and len(_operands(node)) >= 2


def _float_reason(node: torch.fx.Node, fold_stats: dict[str, str]) -> str:
    if node.name in fold_stats:
        return f"fold-qdq: {fold_stats[node.name]}"
    if get(node, QuantParams.key) is None:
        return "not observed (observe's skip, only or ops options)"
    return f"fold-qdq has no integer kernel for {node.target}"


def quant_report(
    graph_or_model: Graph | torch.nn.Module,
    data: Iterable[tuple[torch.Tensor, ...]],
    *,
    passes: str | Sequence[Pass | str] = DEFAULT_PIPELINE,
    limit: int = 0,
    weight_scheme: str | None = None,
    weight_bits: int | None = None,
    compare_weights: str | None = None,
    bf16: bool = False,
) -> QuantReport:
    """Quantize with `passes`, calibrated and measured on `data` (at most `limit` batches; 0: all).

    `weight_scheme` / `weight_bits` override observe's options; `compare_weights`
    (``"uniform"`` or ``"log"``) adds each layer's error with its weight on those
    levels instead (see the module docstring); `bf16` adds each linear's error computed in bfloat16.
    """
    if limit < 0:
        raise InputError(f"quant-report: limit must be >= 0 (0: all batches), got {limit}")
    if compare_weights is not None and compare_weights not in LEVELS:
        raise InputError(f"quant-report: compare_weights must be one of {', '.join(LEVELS)}, got {compare_weights!r}")
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise InputError(f"quant-report: data must be an iterable of input tuples, got {type(data).__name__}")
    batches = list(islice(data, limit or None))
    if not batches:
        raise InputError("quant-report: the calibration data is empty; give at least one tuple of input tensors")
    graph = graph_or_model if isinstance(graph_or_model, Graph) else capture(graph_or_model, batches[0])
    if Property.QUANTIZED in graph.properties:
        raise InputError("quant-report: the graph is already quantized (fold-qdq ran); give the float graph or model")
    items = _with_weights(as_passes(passes, REGISTRY), weight_scheme, weight_bits)
    before, after = _split(items, batches)
    if not any(isinstance(p, Observe) for p in before) and Property.OBSERVED not in graph.properties:
        raise InputError(
            f"quant-report: the pipeline {_text(items)!r} has no observe pass, so nothing is quantized; "
            f"e.g. {DEFAULT_PIPELINE!r} ({PIPELINES[DEFAULT_PIPELINE]})"
        )
    calibrated = optimize(graph, before)
    folded = optimize(calibrated, after)
    fold_stats: dict[str, str] = {}
    for record in folded.trace[len(calibrated.trace) :]:
        if record.pipeline.startswith(FoldQDQ.name):
            fold_stats.update(record.stats.get("float", {}))
    left = {(n.name, n.target) for n in folded.nodes("call_function")}
    roots = [n for n in calibrated.nodes("call_function") if n.target in QUANTIZABLE and _is_layer_op(n)]
    layers = [n for n in roots if isinstance(get(n, QuantParams.key), QuantParams)]
    int8 = frozenset(n for n in layers if (n.name, n.target) not in left)
    float_ops = [
        FloatOp(n.name, QUANTIZABLE[n.target], module_path(n), _float_reason(n, fold_stats))
        for n in roots
        if (n.name, n.target) in left
    ]
    weights = _weights(calibrated, layers)
    alt = _compared(calibrated, weights, before, compare_weights) if compare_weights else {}
    bf16_layers = frozenset(n for n in layers if bf16 and _bf16_able(n))
    errors = _measure(calibrated, folded, layers, int8, batches, alt, bf16_layers)
    rows = [
        LayerRow(
            n.name,
            QUANTIZABLE[n.target],
            module_path(n),
            n in int8,
            errors[n][0].sqnr_db,
            errors[n][0].cosine,
            errors[n][1].sqnr_db,
            errors[n][1].cosine,
            errors[n][2].sqnr_db,
            errors[n][2].cosine,
            _weight_sqnr(calibrated, weights.get(n)),
            _weight_sqnr(calibrated, weights.get(n), alt.get(n)),
            errors[n][3].sqnr_db if n in alt else None,
            errors[n][4].sqnr_db if n in bf16_layers else None,
            errors[n][5].cosine if n in bf16_layers else None,
        )
        for n in layers
    ]
    rows.sort(key=lambda r: (not r.int8, r.model_sqnr_db, r.sqnr_db))
    model = errors[None][0]
    return QuantReport(
        graph.model_name,
        _text(before + after),
        len(batches),
        model.sqnr_db,
        model.cosine,
        rows,
        float_ops,
        compare_weights,
        bf16,
    )


def _bf16_able(node: torch.fx.Node) -> bool:
    """A linear or conv2d with a constant weight: what ``cast-bf16`` would cast."""
    w = node.args[1] if len(node.args) > 1 else None
    ops = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)
    return node.target in ops and isinstance(w, torch.fx.Node) and w.op == "get_attr"


def _with_weights(items: list[Pass], scheme: str | None, bits: int | None) -> list[Pass]:
    """`items` with every observe's weight-scheme / weight-bits replaced where given."""
    if scheme is None and bits is None:
        return items
    if not any(isinstance(p, Observe) for p in items):
        raise InputError(
            f"quant-report: weight-scheme / weight-bits set observe's options, but the pipeline {_text(items)!r} "
            "has no observe pass"
        )
    changes: dict[str, Any] = {}
    if scheme is not None:
        changes["weight_scheme"] = scheme
    if bits is not None:
        changes["weight_bits"] = bits
    try:
        return [replace(p, **changes) if isinstance(p, Observe) else p for p in items]
    except ValueError as exc:
        raise InputError(f"quant-report: {exc}") from None


def _weights(graph: Graph, layers: list[torch.fx.Node]) -> dict[torch.fx.Node, torch.fx.Node]:
    """Each layer's constant weight operand that carries quantization parameters."""
    found = {}
    for n in layers:
        for a in _operands(n):
            if a.op == "get_attr" and isinstance(get(a, QuantParams.key), QuantParams):
                found[n] = a
                break
    return found


def _compared(
    graph: Graph, weights: dict[torch.fx.Node, torch.fx.Node], before: list[Pass], levels: str
) -> dict[torch.fx.Node, dict[torch.fx.Node, QuantParams]]:
    """Per layer, its weight's parameters on `levels` with observe's other options (the last observe of `before`)."""
    observes = [p for p in before if isinstance(p, Observe)]
    if not observes:
        raise InputError(
            "quant-report: compare_weights needs an observe pass in the pipeline, to take its options from"
        )
    try:
        other = replace(observes[-1], weight_scheme=levels)
    except ValueError as exc:
        raise InputError(f"quant-report: compare_weights={levels!r}: {exc}") from None
    alt = {}
    for layer, w in weights.items():
        own = get(w, QuantParams.key)
        assert isinstance(own, QuantParams)
        observer = other.weight_spec(own.axis).make()
        observer.observe(graph.param(w))
        alt[layer] = {w: observer.qparams()}
    return alt


def _weight_sqnr(
    graph: Graph, w: torch.fx.Node | None, override: dict[torch.fx.Node, QuantParams] | None = None
) -> float | None:
    """SQNR of a weight against its fake-quantized values (its own parameters, or `override`'s)."""
    if w is None or (override is not None and w not in override):
        return None
    params = override[w] if override is not None else get(w, QuantParams.key)
    assert isinstance(params, QuantParams)
    value = graph.param(w).detach()
    error = _Error()
    error.add(value, params.fake_quantize(value))
    return error.sqnr_db


def _text(passes: Sequence[Pass]) -> str:
    return ",".join(p.text() for p in passes)  # calibrate's data is not pipeline text


def _mutates(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


def _measure(
    calibrated: Graph,
    folded: Graph,
    layers: list[torch.fx.Node],
    int8: frozenset[torch.fx.Node],
    batches: list[tuple[torch.Tensor, ...]],
    alt: dict[torch.fx.Node, dict[torch.fx.Node, QuantParams]],
    bf16: frozenset[torch.fx.Node] = frozenset(),
) -> dict[torch.fx.Node | None, list[_Error]]:
    """Per layer: [alone at its output, alone at the model output, cumulative, alone with `alt`'s weight
    parameters, in bf16 alone at its output, in bf16 alone at the model output]; under None: the int8 graph."""
    errors: dict[torch.fx.Node | None, list[_Error]] = {n: [_Error() for _ in range(6)] for n in [*layers, None]}
    gm = calibrated.gm
    nodes = list(gm.graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    reuse = not any(_mutates(n) for n in nodes)  # an in-place op would change the float values kept for reuse
    bar = tqdm(batches, desc="quant-report", unit="batch", leave=False, disable=not sys.stderr.isatty())
    with torch.no_grad():
        for batch in bar:
            ref = _FakeQuant(gm, (), layers)
            ref.garbage_collect_values = not reuse
            ref_out = _flat(ref.run(*batch))
            errors[None][0].add(ref_out, _flat(folded(*batch)))
            full = _FakeQuant(gm, int8, layers)
            full.run(*batch)
            for n in layers:
                errors[n][2].add(ref.seen[n], full.seen[n])
                start = nodes[: position[n]] if reuse else []  # float up to n: not rerun
                alone = _FakeQuant(gm, (n,), (n,))
                out = _flat(alone.run(*batch, initial_env={m: ref.env[m] for m in start} if reuse else None))
                errors[n][0].add(ref.seen[n], alone.seen[n])
                errors[n][1].add(ref_out, out)
                if n in alt:  # a run fills and empties the env it is given: a fresh one
                    other = _FakeQuant(gm, (n,), (n,), alt[n])
                    other.run(*batch, initial_env={m: ref.env[m] for m in start} if reuse else None)
                    errors[n][3].add(ref.seen[n], other.seen[n])
                if n in bf16:
                    half = _FakeQuant(gm, (), (n,), bf16=(n,))
                    out = _flat(half.run(*batch, initial_env={m: ref.env[m] for m in start} if reuse else None))
                    errors[n][4].add(ref.seen[n], half.seen[n])
                    errors[n][5].add(ref_out, out)
    return errors
