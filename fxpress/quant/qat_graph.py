"""Put trainable fake quantization into a calibrated graph, and take it out again with what it learned.

    %y = aten.linear(%x, %w, %b)   # x, w, y carry QuantParams (observe, calibrate); another linear reads y
      -> %xf = fxpress.fake_quantize(%x, %x_scale, %x_zp, -128, 127, -1, g)
         %wf = fxpress.fake_quantize(%w, %w_scale, %w_zp, -127, 127, 0, g)
         %y  = aten.linear(%xf, %wf, %b)
         %yf = fxpress.fake_quantize(%y, %y_scale, %y_zp, -128, 127, -1, g)   # every reader of y reads yf

`insert_fake_quant` (the ``fake-quantize`` pass) rounds exactly where
``fold-qdq`` will (`int8_operands`): the weights and activation inputs of the
linears, convs and matmuls it folds, traced back through shared slots (views,
max-pools: their values are their input's, already on its grid). A float
op's output is rounded for those integer readers only (a layer norm feeds
the next linear int8 and the residual add float); an integer product's
output, when an integer op reads it, for every reader (they all read its
dequantized int8 result), and not at all when only float ops read it
(fold-qdq hands them the unrounded accumulator); adds and cats stay float,
and a dynamic linear's input is quantized per row at run time. Wrapping
more would train a model that rounds where the deployed one does not. The parameters become
tensors of the graph, `learn=True` making them trainable parameters
(LSQ's step size, and for affine schemes LSQ+'s offset; a power-of-two scale
stays fixed, since a learned one would leave the powers of two) and
`learn=False` buffers that no trainer moves. An activation's annotations move
onto its fake-quantize node, which now holds the quantized value (so shared
slots downstream still find an observed input); a weight's stay on the weight.

`freeze_fake_quant` (the ``freeze-fake-quant`` pass) reads the trained scale
and zero point of each fake-quantize node back into `QuantParams` (scale at
least float32 eps, the zero point rounded and clamped: exactly the values the
op used), moves the annotations back, and removes the ops and their tensors.
The graph is then a calibrated graph again, and ``fold-qdq`` turns it into
the int8 ops whose results equal the trained fake-quantized ones up to
fold-qdq's usual one-step rounding of bias and multiplier.

Bad input: a graph with no observer slots (run observe, calibrate), an
observed value without parameters (run calibrate), log-level weights
(``observe{weight-scheme=log}``: the op rounds to uniform levels only;
post-training log quantization met its accuracy target without training).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.fx

from fxpress.errors import InputError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.printer import locate
from fxpress.quant.annotations import DynamicQuant, ObserverSlot, QuantParams
from fxpress.quant.fake_quant import EPS, fake_quantize, lsq_grad_factor
from fxpress.quant.opsets import QUANTIZABLE

FAKE_QUANTIZE = torch.ops.fxpress.fake_quantize.default
_KEYS = (ObserverSlot.key, QuantParams.key)
_INT8_KINDS = frozenset({"linear", "conv2d", "matmul", "bmm"})  # the roots fold-qdq turns into integer ops
_ = fake_quantize  # registers the op


def is_fake_quant(node: object) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is FAKE_QUANTIZE


def _per_scale_elements(val: torch.Tensor, axis: int | None, weight: bool) -> int:
    """How many elements one scale covers, for LSQ's gradient factor (an activation's batch excluded)."""
    dims = [d for d in val.shape if isinstance(d, int)]
    if not weight and val.dim() > 1 and isinstance(val.shape[0], int):
        dims = [d for d in val.shape[1:] if isinstance(d, int)]
    n = math.prod(dims) if dims else 1
    if axis is not None and isinstance(val.shape[axis], int):
        n //= max(int(val.shape[axis]), 1)
    return n


def int8_operands(graph: Graph) -> dict[torch.fx.Node, set[torch.fx.Node]]:
    """The values fold-qdq will quantize, each with its readers that take it quantized.

    A value is quantized for the linears, convs and matmuls fold-qdq folds
    that read it, directly or through shared slots (views, max-pools: the
    reader recorded is the first node of that chain). Not for the other
    readers of a float op's output (a residual add reads the layer norm's
    float output while the next linear reads its int8 one), and not at all for
    a product only float ops read (fold-qdq's float-out hands them the
    unrounded accumulator); adds and cats stay float; a dynamic linear
    quantizes its input per row at run time.
    """
    found: dict[torch.fx.Node, set[torch.fx.Node]] = {}
    for node in graph.nodes("call_function"):
        if QUANTIZABLE.get(node.target) not in _INT8_KINDS:
            continue
        dynamic = notes.get(node, DynamicQuant.key) is not None
        if not dynamic and not isinstance(notes.get(node, QuantParams.key), QuantParams):
            continue  # left float (skipped, or not calibrated): its operands are not quantized for it
        for i, operand in enumerate(node.args[:2]):
            if not isinstance(operand, torch.fx.Node) or (dynamic and i == 0):
                continue
            reader, value = node, operand
            while _shares(value):
                reader, value = value, cast(torch.fx.Node, value.args[0])
            found.setdefault(value, set()).add(reader)
    return found


def _shares(node: torch.fx.Node) -> bool:
    """`node` has a shared slot: its values are its input's (a view, a max-pool)."""
    slot = notes.get(node, ObserverSlot.key)
    return (
        isinstance(slot, ObserverSlot) and slot.shared and bool(node.args) and isinstance(node.args[0], torch.fx.Node)
    )


def _int8_product(node: torch.fx.Node) -> bool:
    """`node` is a linear, conv or matmul fold-qdq folds, whose int8 output every reader then sees."""
    return QUANTIZABLE.get(node.target) in _INT8_KINDS and isinstance(notes.get(node, QuantParams.key), QuantParams)


def _sites(graph: Graph) -> list[tuple[torch.fx.Node, QuantParams, set[torch.fx.Node] | None]]:
    """The values to wrap: observed values fold-qdq will quantize, their parameters and the readers to
    redirect (None: all of them)."""
    sites, observed = [], 0
    quantized = int8_operands(graph)
    for node in graph.nodes():
        slot = notes.get(node, ObserverSlot.key)
        if not isinstance(slot, ObserverSlot):
            continue
        observed += 1
        params = notes.get(node, QuantParams.key)
        if not slot.shared and not isinstance(params, QuantParams):
            raise InputError(
                f"{node.name} is observed but has no quantization parameters; run calibrate before fake-quantize",
                node=node.name,
                notes=[locate(graph, node)],
            )
        if slot.shared or is_fake_quant(node) or node not in quantized:
            continue
        assert isinstance(params, QuantParams)
        if params.scheme.log_levels:
            raise InputError(
                f"{node.name} ({node.target}) has log-level weights ({params.scheme.text()}); fake-quantize rounds "
                "to uniform levels only, so training would round differently from fold-qdq. Quantize log weights "
                "post-training (observe{weight-scheme=log,weight-bits=4},calibrate,fold-qdq), or train with "
                "uniform weights (drop weight-scheme=log)",
                node=node.name,
                notes=[locate(graph, node)],
            )
        everyone = node.op == "get_attr" or _int8_product(node)
        sites.append((node, params, None if everyone else quantized[node]))
    if observed == 0:
        raise InputError(
            "fake-quantize found no observed values; quantization-aware training starts from an observed, "
            "calibrated graph: run observe and calibrate first (e.g. observe{per-channel=true},calibrate,fake-quantize)"
        )
    return sites


def _before_inputs_end(graph: Graph) -> set[torch.fx.Node]:
    """The nodes up to the last input: a new node goes after them (inputs come first)."""
    inputs = list(graph.nodes("placeholder"))
    if not inputs:
        return set()
    early: set[torch.fx.Node] = set()
    for node in graph.nodes():
        early.add(node)
        if node is inputs[-1]:
            return early
    return early


def insert_fake_quant(graph: Graph, *, learn: bool) -> int:
    """Wrap every observed value of `graph` in ``fake_quantize`` (in place); returns how many."""
    sites = _sites(graph)
    early = _before_inputs_end(graph)
    last_input = next(reversed(list(graph.nodes("placeholder"))), None)
    for node, params, readers in sites:
        weight = node.op == "get_attr"
        scheme = params.scheme
        qmin, qmax = scheme.qrange
        val = node.meta["val"]
        factor = lsq_grad_factor(_per_scale_elements(val, scheme.axis, weight), qmax)
        hint = f"{node.name}.fq"
        first = (last_input if node in early and last_input is not None else node).next
        scale = graph.add_param(
            f"{hint}_scale", params.scale.float(), before=first, buffer=not learn or scheme.power_of_two
        )
        zero = graph.add_param(
            f"{hint}_zero_point", params.zero_point.float(), before=first, buffer=not learn or scheme.symmetric
        )
        axis = -1 if scheme.axis is None else scheme.axis
        with graph.fx.inserting_before(first):
            fq = graph.fx.call_function(FAKE_QUANTIZE, (node, scale, zero, qmin, qmax, axis, factor))
        fq.meta["val"] = val
        for key in ("nn_module_stack", "stack_trace"):
            if key in node.meta:
                fq.meta[key] = node.meta[key]
        # a weight or an int8 product: every reader sees the quantized value; a float op's output: the
        # integer readers only
        for reader in [u for u in node.users if u is not fq] if readers is None else readers:
            reader.replace_input_with(node, fq)
        if not weight:  # fq holds the quantized value; the other readers keep the float one and its facts
            mine = notes.annotations(node)
            for key in _KEYS:
                if key in mine:
                    notes.annotate(fq, mine.pop(key) if readers is None else mine[key])
    if sites:
        graph.recompile()
    return len(sites)


def freeze_fake_quant(graph: Graph) -> int:
    """Replace every ``fake_quantize`` by its trained parameters, as `QuantParams` (in place); returns how many."""
    fqs = [n for n in graph.nodes("call_function") if is_fake_quant(n)]
    for fq in fqs:
        x, scale_node, zero_node = fq.args[:3]
        assert isinstance(x, torch.fx.Node) and isinstance(scale_node, torch.fx.Node)
        assert isinstance(zero_node, torch.fx.Node)
        weight = x.op == "get_attr"
        holder = x if weight else fq
        params = notes.get(holder, QuantParams.key)
        if not isinstance(params, QuantParams):
            raise InputError(
                f"fake-quantize node {fq.name} carries no quantization scheme; it was not made by fake-quantize",
                node=fq.name,
            )
        qmin, qmax = params.scheme.qrange
        scale = graph.param(scale_node).detach().float().clamp_min(EPS).reshape(-1).clone()
        zero = torch.round(graph.param(zero_node).detach().float()).clamp(qmin, qmax).to(torch.int64).reshape(-1)
        new = QuantParams(params.scheme, scale, zero)
        if not weight:
            mine = notes.annotations(fq)
            for key in _KEYS:
                if key in mine:
                    notes.annotate(x, mine.pop(key))
        notes.annotate(x, new)
        fq.replace_all_uses_with(x)
        graph.fx.erase_node(fq)
        for held in (scale_node, zero_node):
            _drop(graph, held)
    if fqs:
        graph.recompile()
    return len(fqs)


def _drop(graph: Graph, node: torch.fx.Node) -> None:
    """Erase a scale / zero point tensor of a removed fake-quantize (only that: other unused tensors stay)."""
    if node.users:
        return
    target = str(node.target)
    graph.fx.erase_node(node)
    if not any(str(n.target) == target for n in graph.nodes("get_attr")):
        owner, _, leaf = target.rpartition(".")
        delattr(graph.gm.get_submodule(owner) if owner else graph.gm, leaf)
