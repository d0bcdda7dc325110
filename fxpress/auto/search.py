"""`fxpress.auto`: search per-layer methods against measured latency, return the Pareto set.

    result = fxpress.auto(graph, calibration=batches, budget="accuracy>=0.99")
    result.best.pipeline       # text that reproduces the chosen model with fxpress.optimize
    print(result.text())       # every layer: the methods tried, their cost and accuracy effect

The steps, each cached (`fxpress.auto.cache`), so an interrupted search resumes:

1. **Layers** (`layers.find_layers`): every linear / conv2d with a constant
   weight, its input recorded on the timing inputs.
2. **Sensitivity** (`sensitivity`): each layer under each method alone,
   evaluated (a quantized method against the *int8 rest*: every layer float,
   attention matmuls and adds int8, which observe quantizes whenever any
   layer is int8; the model counts the rest's own cost once); methods that do not apply, fail or change nothing are dropped
   for that layer with the reason.
3. **Cost** (`latency.LatencyTable`): each layer under each method it keeps,
   compiled for the target and timed; the whole float model and the plain
   int8 model (every layer static int8) compiled and timed too, which gives
   the measured *rest* (what is not a layer: attention, norms, activations,
   quantize/dequantize) for float and quantized candidates. A candidate's
   estimate is the sum of its layers' times plus the rest; its size is
   exact (`fxpress.reports.size.weight_sizes` of the optimized graph). A
   one-layer int8 graph pays a quantize and a dequantize that a chain of
   int8 layers does not, so quantized layer times are scaled by one factor
   that makes the all-int8 estimate equal the measured all-int8 model.
4. **Candidates**: a sweep of per-layer choices minimizing
   ``ms + mu * bytes + lambda * accuracy effect`` (additive model) over a
   geometric range of lambda, mu in {0, 1} (latency-first and size-first),
   each lower bit width tried where every int8 layer tolerates it; they are
   evaluated whole, nearest the budget first; then a greedy, seeded
   refinement from the best point: single-layer moves ordered by what they
   gain per accuracy they cost, kept when the evaluated model still meets
   the budget, until ``max_candidates`` evaluations.
5. **Confirmation**: the best point and the other Pareto points (up to
   ``confirm``) are compiled whole and timed; measured latency replaces the
   estimate, and the best point is chosen again among confirmed points.

A budget no candidate meets is not an error: the result says ``met=False``,
its ``message`` names the closest point (also `result.best`), a
`BudgetNotMetWarning` is issued, and the Pareto set is returned as usual.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fxpress import progress
from fxpress.auto.budget import Budget
from fxpress.auto.cache import JsonStore, data_fingerprint, default_cache_dir, graph_fingerprint
from fxpress.auto.errors import AutoError, BudgetNotMetWarning
from fxpress.auto.evaluate import Evaluation, call_evaluation, check_batches, default_evaluation
from fxpress.auto.latency import LatencyTable
from fxpress.auto.layers import Layer, find_layers
from fxpress.auto.methods import Method, Plan, default_methods, optimize_text, pipeline_text
from fxpress.auto.result import AutoResult, LayerReport, Point, Trial, pareto
from fxpress.auto.sensitivity import alone_plans, bits_label, combine, is_error, signature, trial_from
from fxpress.backends.tvm.targets import resolve_target
from fxpress.ir.graph import Graph
from fxpress.quant.opsets import QUANTIZABLE
from fxpress.reports.size import weight_sizes

INT8 = Method("none", "int8")


@dataclass
class _Search:
    """The state one search shares between its steps."""

    graph: Graph
    layers: list[Layer]
    calibration: list[tuple[torch.Tensor, ...]]
    evaluation: Evaluation
    store: JsonStore
    table: LatencyTable
    latency_inputs: tuple[torch.Tensor, ...]
    fold_bn: bool
    reduce_range: bool
    bar: Any
    bits: list[int] = field(default_factory=lambda: [8])
    quick: tuple[list[tuple[torch.Tensor, ...]], Evaluation] | None = None  # sensitivity's calibration, evaluation
    evaluated: dict[str, Point] = field(default_factory=dict)
    evaluations: int = 0

    def text(self, plan: Plan) -> str:
        return pipeline_text(plan, self.layers, fold_bn=self.fold_bn, reduce_range=self.reduce_range)

    def outcome(self, plan: Plan, probe: Layer | None = None) -> dict[str, Any]:
        """{"accuracy", "bytes", "effect"} of `plan` (cached by its text), or {"error"} if its passes fail."""
        text = self.text(plan)
        quick = self.quick if probe is not None or not plan.methods else None  # sensitivity and its references
        key = f"{'quick' if quick else 'eval'}|{text}"
        calibration, evaluation = quick or (self.calibration, self.evaluation)
        hit = self.store.get(key)
        if hit is not None and (probe is None or "effect" in hit or "error" in hit):
            return dict(hit)
        try:
            optimized = optimize_text(self.graph, text, calibration) if text else self.graph
        except Exception as exc:
            if probe is None or not is_error(exc):
                raise
            entry: dict[str, Any] = {"error": str(exc).splitlines()[0][:300]}
            self.store.put(key, entry)
            return entry
        if probe is not None and signature(optimized, probe) == signature(self.graph, probe):
            entry = {"effect": False}  # the passes left the layer alone: nothing to evaluate
            self.store.put(key, entry)
            return entry
        accuracy = call_evaluation(evaluation, optimized, text)
        self.evaluations += 1
        entry = {"accuracy": accuracy, "bytes": weight_sizes(optimized).stored_bytes}
        if probe is not None:
            entry["effect"] = True
        self.store.put(key, entry)
        self.bar.update(1)
        return entry

    def rest_quantizable(self) -> bool:
        """Whether observe quantizes anything besides the layers (an attention matmul, an add, a cat)."""
        kinds = {"matmul", "bmm", "add", "cat"}
        return any(QUANTIZABLE.get(n.target) in kinds for n in self.graph.nodes("call_function"))

    def timed_graph(self, text: str) -> Graph:
        """The timing graph under pipeline `text`, calibrated on the timing inputs (ranges do not change kernels)."""
        graph = self.table.graph
        return optimize_text(graph, text, [self.latency_inputs]) if text else graph

    def whole_ms(self, plan: Plan) -> tuple[float, float]:
        """(ms, cpu per wall) of the whole model under `plan`, compiled and timed (cached)."""
        text = self.text(plan)
        shapes = [list(t.shape) for t in self.latency_inputs]
        shape_hash = hashlib.sha256(str(self.table.graph).encode()).hexdigest()[:12]  # static or symbolic sizes
        key = f"whole|{text}|{shapes}|{shape_hash}|{self.table.target}/{self.table.isa}|threads={self.table.threads}"
        hit = self.store.get(key)
        if hit is None:
            timing = self.table.whole(self.timed_graph(text), self.latency_inputs)
            hit = {"ms": timing.ms, "cpu_per_wall": timing.cpu_per_wall}
            self.store.put(key, hit)
            self.bar.update(1)
        return float(hit["ms"]), float(hit["cpu_per_wall"])


def _options(trials: dict[str, Trial]) -> dict[str, Trial]:
    """The trials a layer may take: measured ones (float included), bit-width rows left out."""
    return {k: t for k, t in trials.items() if t.skipped is None and t.ms is not None and not k.startswith("int8 w")}


class _Model:
    """The additive estimate: latency = sum of layer ms + rest; accuracy = float - sum of effects."""

    def __init__(
        self,
        layers: list[Layer],
        trials: dict[str, dict[str, Trial]],
        rest: dict[str, float],
        rest_effect: float,
        chain: float = 1.0,
    ) -> None:
        self.layers, self.trials, self.rest, self.rest_effect, self.chain = layers, trials, rest, rest_effect, chain

    def cost(self, t: Trial) -> float:
        """A trial's time inside a model: measured, a quantized one scaled by the chain factor."""
        quantized = t.method.startswith("int8 w") or Method.parse(t.method).quantized
        return (t.ms or 0.0) * (self.chain if quantized else 1.0)

    def ms(self, plan: Plan) -> float:
        quantized = any(m.quantized for m in plan.methods.values())
        total = self.rest["int8" if quantized else "float"]
        for layer in self.layers:
            total += self.cost(self.trials[layer.ident][plan.methods.get(layer.ident, Method()).label])
        return total

    def effect(self, plan: Plan) -> float:
        total = self.rest_effect if any(m.quantized for m in plan.methods.values()) else 0.0
        for layer in self.layers:
            m = plan.methods.get(layer.ident, Method())
            total += max(self.trials[layer.ident][m.label].delta or 0.0, 0.0)
            narrow = self.trials[layer.ident].get(bits_label(plan.weight_bits))
            if m.quantized and plan.weight_bits < 8 and narrow is not None:  # what fewer bits add to int8's effect
                total += max((narrow.delta or 0.0) - (self.trials[layer.ident][INT8.label].delta or 0.0), 0.0)
        return total


def _sweep(model: _Model, float_ms: float, bytes_total: float, weight_bits: Sequence[int]) -> list[Plan]:
    """Per-layer argmin of ms + mu * bytes + lambda * effect over lambda (geometric) and mu in {0, 1}."""
    per_layer = float_ms / max(len(model.layers), 1)
    lambdas = [0.0] + [per_layer * 10 ** (k / 2) for k in range(-2, 13)] + [math.inf]
    plans: dict[Any, Plan] = {}
    for mu in (0.0, float_ms / max(bytes_total, 1.0)):
        for lam in lambdas:
            methods = {}
            for layer in model.layers:
                options = _options(model.trials[layer.ident])

                def cost(label: str, mu: float = mu, lam: float = lam, options: dict[str, Trial] = options) -> tuple:
                    t = options[label]
                    effect = max(t.delta or 0.0, 0.0)
                    main = effect if math.isinf(lam) else model.cost(t) + mu * (t.bytes or 0) + lam * effect
                    return (main, model.cost(t), label)

                methods[layer.ident] = Method.parse(min(options, key=cost))
            for bits in weight_bits:
                plan = Plan(methods, bits)
                if bits == 8 or any(m == INT8 for m in methods.values()):
                    plans.setdefault(plan.key(), plan)
    return list(plans.values())


def _point(s: _Search, model: _Model, plan: Plan, source: str) -> Point | None:
    text = s.text(plan)
    if text in s.evaluated:
        return s.evaluated[text]
    outcome = s.outcome(plan)
    point = Point(
        text,
        {k: m.label for k, m in sorted(plan.methods.items()) if m != Method()},
        plan.weight_bits,
        float(outcome["accuracy"]),
        int(outcome["bytes"]),
        model.ms(plan) if plan.weight_bits == 8 else _bits_ms(s, model, plan),
        source=source,
    )
    s.evaluated[text] = point
    return point


def _bits_ms(s: _Search, model: _Model, plan: Plan) -> float:
    """The estimate with int8 layers at the plan's bit width (their kernels measured at that width)."""
    total = model.ms(plan)
    for layer in s.layers:
        if plan.methods.get(layer.ident) == INT8:
            narrow = s.table.layer(layer, INT8, plan.weight_bits)["ms"]
            total += model.chain * (narrow - (model.trials[layer.ident][INT8.label].ms or 0.0))
    return total


def _refine(
    s: _Search, model: _Model, budget: Budget, best: Point, plans: dict[str, Plan], rng: random.Random, limit: int
) -> None:
    """Greedy single-layer moves from `best` (see the module docstring), until `limit` evaluations."""
    tried: set[str] = set(s.evaluated)
    current = best
    while len(s.evaluated) < limit:
        plan = plans[current.pipeline]
        moves: list[tuple[float, float, Plan]] = []
        for layer in s.layers:
            here = model.trials[layer.ident][plan.methods.get(layer.ident, Method()).label]
            for label, t in _options(model.trials[layer.ident]).items():
                new = plan.with_method(layer.ident, Method.parse(label))
                if s.text(new) in tried:
                    continue
                d_ms = model.cost(t) - model.cost(here)
                d_bytes = (t.bytes or 0) - (here.bytes or 0)
                d_eff = max(t.delta or 0.0, 0.0) - max(here.delta or 0.0, 0.0)
                meets = budget.meets(current)
                if budget.accuracy is not None:
                    gain = -d_ms if meets else -d_eff  # faster while it holds; else win accuracy back
                    cost = d_eff if meets else max(d_ms, 0.0)
                elif budget.latency_ms is not None:
                    gain, cost = (-d_eff, max(d_ms, 0.0)) if meets else (-d_ms, max(d_eff, 0.0))
                else:
                    gain, cost = (-d_eff, max(d_bytes, 0.0)) if meets else (-d_bytes, max(d_eff, 0.0))
                if gain <= 0:
                    continue
                moves.append((gain / (abs(cost) + 1e-9), rng.random(), new))
        for bits in s.bits:  # the weight width is one choice for the whole candidate
            new = Plan(plan.methods, bits)
            if (
                bits != plan.weight_bits
                and s.text(new) not in tried
                and any(m.quantized for m in plan.methods.values())
            ):
                moves.append((math.inf if budget.size_bytes is not None else 0.0, rng.random(), new))
        if not moves:
            return
        moves.sort(key=lambda m: (-m[0], m[1]))
        improved = False
        for _, _, new in moves[:4]:
            if len(s.evaluated) >= limit:
                return
            text = s.text(new)
            tried.add(text)
            plans[text] = new
            point = _point(s, model, new, "refine")
            if point is None:
                continue
            better = budget.meets(point) and (not budget.meets(current) or budget.rank(point) < budget.rank(current))
            closer = not budget.meets(current) and budget.shortfall(point) < budget.shortfall(current)
            if better or closer:
                current, improved = point, True
                break
        if not improved:
            return


def _check_same_model(graph: Graph, timing_graph: Graph, layers: Sequence[Layer]) -> None:
    """`timing_graph` holds every layer of `graph` under the same node name, op and weight; else `AutoError`."""
    if timing_graph is graph:
        return
    nodes = {n.name: n for n in graph.nodes("call_function")}
    for layer in layers:
        node = nodes.get(layer.name)
        same = node is not None and len(node.args) > 1 and getattr(node.args[1], "target", None) == layer.weight
        if not same or not torch.equal(graph.param(layer.weight), timing_graph.param(layer.weight)):
            raise AutoError(
                f"latency_graph is not the model `graph` holds: its layer {layer.ident!r} ({layer.name}) has no "
                "twin there with the same weight; capture the same model at the timing shape"
            )


def _choose(points: Iterable[Point], budget: Budget) -> tuple[Point | None, bool]:
    pts = list(points)
    meeting = [p for p in pts if budget.meets(p)]
    if meeting:
        return min(meeting, key=budget.rank), True
    if not pts:
        return None, False
    return min(pts, key=lambda p: (budget.shortfall(p), budget.rank(p))), False


def auto(
    graph: Graph,
    calibration: Sequence[tuple[torch.Tensor, ...]],
    *,
    budget: Budget | str,
    evaluate: Callable[[Graph], float] | None = None,
    held_out: Sequence[tuple[torch.Tensor, ...]] | None = None,
    metric: str = "cosine",
    target: str = "x86",
    threads: int = 1,
    methods: Sequence[Method | str] | None = None,
    weight_bits: Sequence[int] = (8, 4),
    latency_inputs: Sequence[torch.Tensor] | None = None,
    latency_graph: Graph | None = None,
    include: Sequence[str] = (),
    seed: int = 0,
    max_candidates: int = 24,
    confirm: int = 4,
    sensitivity_batches: int = 0,
    cache_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress_bar: bool | None = None,
) -> AutoResult:
    """Search per-layer compression methods for `graph` under `budget`; see the module docstring.

    `calibration`: input tuples for ``calibrate``. `evaluate(graph) -> float` (higher is better);
    without it, `metric` (``cosine`` or ``top1``) against the float graph on `held_out` (default: the
    last quarter of `calibration`, which then calibrates with the rest). `methods`: `Method`s or labels
    (``int8``, ``dynamic``, ``prune=0.25+int8``, ...; default `default_methods()`); `weight_bits`: the
    widths tried for int8 weights. `latency_inputs`: what the model is timed on (default the graph's
    example inputs of `latency_graph`, else of `graph`). `latency_graph`: the same model captured at the
    shape it will run at (static sizes), used for every timing when `graph` has a dynamic batch for the
    evaluation (kernels compiled for symbolic sizes can be much slower). `include`: pipeline texts to evaluate and show beside the search's own (a hand
    recipe). `sensitivity_batches` (default evaluation only; 0: all): measure each layer's effect alone
    with that many calibration and held-out batches (cheaper; whole candidates always use all). `out_dir`: write ``auto.json`` and ``auto_pareto.png`` there. The graph is never changed.
    """
    start, cpu0 = time.perf_counter(), time.process_time()
    if not isinstance(graph, Graph):
        raise AutoError(
            f"auto takes a captured fxpress Graph (fxpress.capture(model, inputs)), got {type(graph).__name__}"
        )
    budget = Budget.parse(budget)
    if evaluate is not None and not callable(evaluate):
        raise AutoError(f"evaluate must be a function graph -> float, got {type(evaluate).__name__}")
    calib = check_batches(graph, calibration, "calibration")
    if evaluate is None and held_out is None:
        if len(calib) < 2:
            raise AutoError(
                "the default evaluation needs held-out batches: give held_out=[...] or at least two calibration "
                "batches (the last quarter is then held out)"
            )
        cut = len(calib) - max(1, len(calib) // 4)
        calib, held = calib[:cut], calib[cut:]
    else:
        held = check_batches(graph, held_out, "held_out") if held_out is not None else []
    default_inputs = (latency_graph if latency_graph is not None else graph).example_inputs
    timing_inputs = tuple(latency_inputs) if latency_inputs is not None else tuple(default_inputs)
    chosen = [m if isinstance(m, Method) else Method.parse(m) for m in (methods or default_methods())]
    if Method() not in chosen:
        chosen.insert(0, Method())
    bits = sorted({int(b) for b in weight_bits} | {8}, reverse=True)
    if any(not 2 <= b <= 8 for b in bits):
        raise AutoError(f"weight_bits must lie in 2..8, got {list(weight_bits)}")
    spec = resolve_target(target, num_threads=threads)
    evaluation = evaluate or default_evaluation(graph, held, metric)
    eval_name = getattr(evaluate, "__qualname__", type(evaluate).__name__) if evaluate else f"{metric} vs float"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = "-".join(
        [graph_fingerprint(graph), data_fingerprint(calib), data_fingerprint(held) if not evaluate else eval_name]
    )
    store = JsonStore(cache / "candidates" / f"{fingerprint.replace('/', '_')[:120]}.json")
    reduce_range = spec.isa.int8_prefers_7bit
    timing_graph = latency_graph if latency_graph is not None else graph
    if not isinstance(timing_graph, Graph):
        raise AutoError(f"latency_graph must be a captured fxpress Graph, got {type(timing_graph).__name__}")
    check_batches(timing_graph, [timing_inputs], "latency_inputs")
    table = LatencyTable(
        timing_graph, target=target, threads=threads, store=JsonStore(cache / "latency.json"), reduce_range=reduce_range
    )
    layers = find_layers(timing_graph, timing_inputs)
    _check_same_model(graph, timing_graph, layers)
    if not layers:
        raise AutoError(
            "the graph has no linear or conv2d layer with a constant weight: nothing to choose a method for"
        )
    fold_bn = any("batch_norm" in str(n.target) for n in graph.nodes("call_function"))
    steps = len(layers) * (len(chosen) + len(bits)) + max_candidates + confirm + 2
    with progress.bar(None, desc="fxpress auto", unit="step", total=steps, progress=progress_bar) as bar:
        s = _Search(graph, layers, calib, evaluation, store, table, timing_inputs, fold_bn, reduce_range, bar, bits)
        if sensitivity_batches and evaluate is None:
            k = sensitivity_batches
            s.quick = (calib[:k], default_evaluation(graph, held[:k], metric))
        result = _run(s, budget, chosen, bits, include, seed, max_candidates, confirm, eval_name, spec.isa.name)
    result.search_s = time.perf_counter() - start
    result.cpu_per_wall = (time.process_time() - cpu0) / max(result.search_s, 1e-9)
    result.threads, result.target = threads, target
    if out_dir is not None:
        result.save(out_dir)
    if not result.met:
        warnings.warn(result.message, BudgetNotMetWarning, stacklevel=2)
    return result


def _measure_layers(
    s: _Search, methods: list[Method], bits: list[int], float_acc: float, rest_acc: float
) -> dict[str, dict[str, Trial]]:
    """Steps 2 and 3: each layer under each method alone (accuracy effect), then its kernel time and size.

    A quantized method's effect is against `rest_acc` (the int8 rest: every layer float, the other
    quantizable ops int8), a float one's against `float_acc`.
    """
    trials: dict[str, dict[str, Trial]] = {}
    for layer in s.layers:  # 2. sensitivity
        row = {Method().label: Trial(Method().label, accuracy=float_acc, delta=0.0)}
        for label, plan in alone_plans(layer, methods, bits):
            if isinstance(plan, str):
                row[label] = Trial(label, skipped=plan)
                s.bar.update(1)
            else:
                quantized = any(m.quantized for m in plan.methods.values())
                row[label] = trial_from(label, s.outcome(plan, layer), rest_acc if quantized else float_acc)
        for m in methods:
            if m.label not in row:
                reason = m.applies(layer)
                row[m.label] = Trial(m.label, skipped=reason) if reason else combine(m, row, float_acc)
        trials[layer.ident] = row
    for layer in s.layers:  # 3. per-layer cost
        for label, t in trials[layer.ident].items():
            if t.skipped is not None:
                continue
            m, b = (INT8, int(label[6:])) if label.startswith("int8 w") else (Method.parse(label), 8)
            entry = s.table.layer(layer, m, b)
            t.ms, t.bytes = float(entry["ms"]), int(entry["bytes"])
            s.bar.update(1)
    return trials


def _run(
    s: _Search,
    budget: Budget,
    methods: list[Method],
    bits: list[int],
    include: Sequence[str],
    seed: int,
    max_candidates: int,
    confirm: int,
    eval_name: str,
    isa: str,
) -> AutoResult:
    rng = random.Random(seed)
    float_acc = float(s.outcome(Plan())["accuracy"])  # on the sensitivity batches when they are fewer
    rest_acc = float(s.outcome(Plan(quantize_rest=True))["accuracy"]) if s.rest_quantizable() else float_acc
    trials = _measure_layers(s, methods, bits, float_acc, rest_acc)
    rest_effect = max(float_acc - rest_acc, 0.0)
    if s.quick is not None:
        s.quick = None
        float_acc = float(s.outcome(Plan())["accuracy"])
    float_ms, float_cpu = s.whole_ms(Plan())
    int8_plan = Plan({x.ident: INT8 for x in s.layers if "int8" in _options(trials[x.ident])})
    rest = {"float": max(0.0, float_ms - sum(trials[x.ident]["float"].ms or 0.0 for x in s.layers))}
    rest["int8"] = rest["float"]
    chain = 1.0
    if int8_plan.methods:
        int8_ms, _ = s.whole_ms(int8_plan)
        layer_ms = sum(trials[x.ident][int8_plan.methods.get(x.ident, Method()).label].ms or 0.0 for x in s.layers)
        # A one-layer int8 graph pays a quantize and a dequantize that a chain of int8 layers does not: scale
        # every quantized layer's time so that the all-int8 estimate is the measured whole model.
        chain = min(1.0, max(0.05, (int8_ms - rest["float"]) / layer_ms)) if layer_ms > 0 else 1.0
        rest["int8"] = max(0.0, int8_ms - chain * layer_ms)
    model = _Model(s.layers, trials, rest, rest_effect, chain)
    plans: dict[str, Plan] = {s.text(Plan()): Plan(), s.text(int8_plan): int8_plan}
    _point(s, model, Plan(), "float")
    _point(s, model, int8_plan, "int8")
    for b in bits[1:] if int8_plan.methods else []:  # plain int8 at each narrower weight width: smaller, same kernels
        narrow = Plan(int8_plan.methods, b)
        plans[s.text(narrow)] = narrow
        _point(s, model, narrow, "sweep")
    for text in include:  # a hand recipe, shown beside the search's points
        optimized = optimize_text(s.graph, text, s.calibration)
        acc = call_evaluation(s.evaluation, optimized, text)
        timed = s.table.whole(s.timed_graph(text), s.latency_inputs)
        ms, cpu = timed.ms, timed.cpu_per_wall
        p = Point(text, {}, 8, acc, weight_sizes(optimized).stored_bytes, ms, ms, cpu, source="include")
        s.evaluated[text] = p
    total_bytes = float(weight_sizes(s.graph).stored_bytes)
    sweep = _sweep(model, float_ms, total_bytes, bits)  # 4. candidates
    predicted = [(float_acc - model.effect(p), model.ms(p), p) for p in sweep]
    floor, ceiling = budget.accuracy, budget.latency_ms
    if floor is not None:
        order = sorted(predicted, key=lambda x: (x[0] < floor, abs(x[0] - floor), x[1]))
    elif ceiling is not None:
        order = sorted(predicted, key=lambda x: (x[1] > ceiling, -x[0]))
    else:
        order = sorted(predicted, key=lambda x: (-x[0],))
    sweep_limit = max(2, (max_candidates * 2) // 3)
    for _, _, plan in order:
        if len(s.evaluated) >= sweep_limit:
            break
        plans[s.text(plan)] = plan
        _point(s, model, plan, "sweep")
    searched = [p for p in s.evaluated.values() if p.source != "include"]
    best, _ = _choose(searched, budget)
    if best is not None:
        _refine(s, model, budget, best, plans, rng, max_candidates + len(include))
    # 5. confirm the best and the Pareto points by compiling the whole model
    s.evaluated[s.text(Plan())].measured_ms, s.evaluated[s.text(Plan())].cpu_per_wall = float_ms, float_cpu
    if int8_plan.methods:
        p8 = s.evaluated[s.text(int8_plan)]
        p8.measured_ms, p8.cpu_per_wall = s.whole_ms(int8_plan)
    for _ in range(confirm):
        searched = [p for p in s.evaluated.values() if p.source != "include"]
        front = pareto(searched)
        best, _ = _choose(searched, budget)
        queue = [best] if best is not None and not best.latency_measured else []
        queue += [p for p in front if not p.latency_measured]
        if not queue:
            break
        p = queue[0]
        p.measured_ms, p.cpu_per_wall = s.whole_ms(plans[p.pipeline])
    searched = [p for p in s.evaluated.values() if p.source != "include"]
    measured = [p for p in searched if p.latency_measured]
    best, met = _choose(measured or searched, budget)
    everything = list(s.evaluated.values())
    message = _message(budget, best, met)
    reports = []
    for layer in s.layers:
        chosen = best.methods.get(layer.ident, "float") if best is not None else None
        if best is not None and chosen == "int8" and best.weight_bits < 8:
            chosen = bits_label(best.weight_bits)
        reports.append(
            LayerReport(
                layer.ident,
                layer.op,
                list(layer.weight_shape),
                list(layer.input_shape),
                list(trials[layer.ident].values()),
                chosen,
            )
        )
    result = AutoResult(
        budget, met, message, best, everything, pareto(everything), reports, float_acc, eval_name, "", isa, 1, seed
    )
    result.rest_accuracy = rest_acc if rest_acc != float_acc else None
    result.int8_chain = model.chain
    return result


def _message(budget: Budget, best: Point | None, met: bool) -> str:
    if best is None:
        return "no candidate could be evaluated"
    if met:
        return f"budget {budget.text()} met; best point: {best.summary()}"
    return (
        f"no candidate meets the budget {budget.text()}; the closest point misses it by "
        f"{100 * budget.shortfall(best):.3g} %: {best.summary()} -- loosen the budget, add methods or calibration "
        "data, or pick another point of the Pareto set"
    )
