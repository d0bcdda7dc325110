"""Which layers a low-rank request factorizes, at what rank, and what each choice costs.

    request = LowRankRequest(ratio=0.5, layers=r".*intermediate.*|.*output\\.dense")
    plan = plan_low_rank(graph, request)     # one row per linear / conv: rank, weights, MACs, error
    [row for row in plan if row.factorized]

The request the ``low-rank`` pass makes, as plain data below the passes, so the
low-rank report reads the very plan the pass applies. Options (checked when
built; each failure a `LowRankError` subclass):

- ``method``: how a kxk conv is factorized, ``tucker2`` (default), ``spatial``
  or ``svd`` (see `fxpress.lowrank.factors`); linears and 1x1 convs always
  take the truncated SVD;
- the rank of each layer, from the first that applies: ``ranks`` (entries
  ``NAME=R``, or ``NAME=RINxROUT`` for tucker2; NAME is a regex that must fully
  match one of the layer's names; several entries in one string separated by
  ``;``); else ``energy`` (the smallest rank keeping that fraction of the sum of
  squared singular values; for tucker2 each channel mode on its own); else
  ``ratio`` (the largest rank whose factors hold at most that fraction of the
  layer's weights and, for convs, of its multiply-adds); with none of the three
  given, ``ratio`` 0.5; with only ``ranks`` given, layers without an entry stay;
- ``rank-multiple``: energy ranks are rounded up to a multiple of it (capped at
  full rank), ratio ranks down (so the budget holds; a rank below one multiple
  stays as it is); explicit ranks are used as written. Multiples of the
  kernels' vector width keep the factors' GEMMs free of remainder tiles;
- ``layers``: a regex; only layers one of whose names fully matches it;
- ``skip``: regexes of layers to leave alone;
- ``data`` (Python only, like ``calibrate``'s): calibration batches (tuples of
  inputs). Given, every layer the SVD factorizes (linears, svd convs) is
  factorized *data-aware*: the SVD of ``W C^(1/2)``, C the second moment of
  the layer's inputs on the data (`fxpress.lowrank.factors.Whitening`), which
  minimizes the layer's output error on that data instead of the weight error;
  energy ranks then count the whitened spectrum. Tucker-2 and spatial ignore it.

A layer's names are its module path (``bert.encoder.layer.0.intermediate.dense``:
what the report prints), its op node's name, and its weight's parameter path.
A layer is left alone, with the reason in its row, when it is a grouped or
depthwise conv (a grouped core would be needed), a transposed, 1-D or 3-D
conv, a conv with string padding, a layer whose weight is computed or shared
with another op, a layer ``low-rank`` already factorized (its factors carry a
`LowRankFactor` mark), or one whose factors would not hold fewer weights and
fewer multiply-adds than it does.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from fxpress.ir import annotations as notes
from fxpress.ir.opsets import CONV, CONV_TRANSPOSE, bind, module_path, packet
from fxpress.lowrank.annotations import LowRankFactor
from fxpress.lowrank.errors import LowRankError, RankError, ThresholdError, UnknownLayerError
from fxpress.lowrank.factors import (
    ConvGeometry,
    Factorization,
    Whitening,
    energy_rank,
    spatial_factors,
    spatial_spectrum,
    svd_factors,
    svd_spectrum,
    tail_error,
    tucker2_factors,
    tucker_spectra,
)
from fxpress.lowrank.moments import input_moments

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph

aten = torch.ops.aten
METHODS = ("tucker2", "spatial", "svd")
DEFAULT_RATIO = 0.5
FACTORIZE = "factorize"
_RANK_TEXT = re.compile(r"[1-9][0-9]*(x[1-9][0-9]*)?")


def parse_ranks(ranks: Any) -> tuple[str, ...]:
    """``{"fc1": 8}``, ``"fc1=8;fc2=4x8"`` or ``("fc1=8", ...)`` -> ``("fc1=8", ...)``, checked."""
    if isinstance(ranks, Mapping):
        items = [f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple | list) else v}" for k, v in ranks.items()]
    elif isinstance(ranks, str):
        items = [ranks]
    else:
        items = [str(r) for r in ranks]
    out = []
    for entry in (e.strip() for item in items for e in item.split(";")):
        if not entry:
            continue
        name, eq, rank = (s.strip() for s in entry.rpartition("="))
        if not eq or not name:
            raise LowRankError(f"ranks entries are NAME=RANK (or NAME=RINxROUT for tucker2), got {entry!r}")
        if re.fullmatch(r"0+(x[0-9]+)?|[0-9]+x0+", rank):
            raise RankError(f"rank 0 for {name!r}: a rank is at least 1 (leave a layer alone with skip=[{name}])")
        if not _RANK_TEXT.fullmatch(rank):
            raise LowRankError(f"ranks entry {entry!r}: the rank must be a positive integer R or RINxROUT")
        _compile(name, "ranks")
        out.append(f"{name}={rank}")
    return tuple(out)


def _compile(regex: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise LowRankError(f"bad regex {regex!r} in {option}: {exc}") from None


@dataclass(frozen=True)
class LowRankRequest:
    """Which layers to factorize, how, and at what rank (see the module docstring)."""

    method: str = "tucker2"
    energy: float | None = None
    ratio: float | None = None
    ranks: tuple[str, ...] = ()
    layers: str | None = None
    skip: tuple[str, ...] = ()
    rank_multiple: int = 16
    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LowRankError(f"method must be one of {', '.join(METHODS)} (how kxk convs split), got {self.method!r}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ThresholdError(f"energy is the fraction of the spectrum kept, in (0, 1]; got {self.energy}")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ThresholdError(
                f"ratio is the fraction of a layer's weights its factors may hold, in (0, 1); got {self.ratio}"
            )
        if self.energy is not None and self.ratio is not None:
            raise ThresholdError("give energy or ratio, not both (energy bounds the error, ratio the size)")
        if isinstance(self.rank_multiple, bool) or not isinstance(self.rank_multiple, int) or self.rank_multiple < 1:
            raise ThresholdError(f"rank-multiple must be an integer >= 1 (1: no rounding), got {self.rank_multiple!r}")
        object.__setattr__(self, "ranks", parse_ranks(self.ranks))
        object.__setattr__(self, "skip", (self.skip,) if isinstance(self.skip, str) else tuple(self.skip))
        for regex in (*([self.layers] if self.layers is not None else []), *self.skip):
            _compile(regex, "layers/skip")
        if isinstance(self.data, str | bytes) or (self.data is not None and not isinstance(self.data, Iterable)):
            raise LowRankError(
                "data (for the data-aware SVD) is a Python iterable of input tuples, not pipeline text: "
                "LowRank(ratio=0.5, data=[(x,), ...])"
            )

    def low_rank_request(self) -> LowRankRequest:
        """This request as a plain `LowRankRequest` (the pass is one; the report takes either)."""
        return LowRankRequest(
            self.method, self.energy, self.ratio, self.ranks, self.layers, self.skip, self.rank_multiple, self.data
        )

    def rank_table(self) -> list[tuple[str, tuple[int, ...]]]:
        """``ranks`` as (regex, ranks) pairs, in order."""
        return [(n, tuple(int(v) for v in r.split("x"))) for n, _, r in (e.rpartition("=") for e in self.ranks)]


# -- the layers of a graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A linear or conv op with a weight operand: what costs depend on, or why it is left alone."""

    name: str
    names: tuple[str, ...]  # what layers / skip / ranks regexes match
    op: torch.fx.Node = field(compare=False)
    kind: str  # linear, conv2d (others: the op's name)
    shape: tuple[int, ...]
    geometry: ConvGeometry | None = None
    positions: tuple[int, int, int] = (1, 1, 1)  # output positions of a 1x1 at the input, after a kh x 1, at the output
    alone: str | None = None  # why the planner cannot factorize it
    factor: LowRankFactor | None = None  # on a factor weight made by an earlier low-rank run

    @property
    def weights(self) -> int:
        return math.prod(self.shape)

    @property
    def macs(self) -> int:
        return self.positions[2] * self.weights

    def method(self, conv_method: str) -> str:
        return conv_method if self.kind == "conv2d" and self.shape[2:] != (1, 1) else "svd"

    def bound(self, method: str) -> tuple[int, ...]:
        """The largest rank(s) `method` takes on this layer."""
        o, i, kh, kw = (*self.shape, 1, 1) if len(self.shape) == 2 else self.shape
        if method == "tucker2":
            return (i, o)
        return (min(i * kh, o * kw),) if method == "spatial" else (min(o, i * kh * kw),)

    def cost(self, method: str, rank: tuple[int, ...]) -> tuple[int, int]:
        """(weights, multiply-adds) of the factors at `rank` (tucker2 drops a 1x1 at full rank, as it is built)."""
        pin, pmid, pout = self.positions
        o, i, kh, kw = (*self.shape, 1, 1) if len(self.shape) == 2 else self.shape
        if method == "tucker2":
            ri, ro = rank
            first, core, last = (i * ri if ri < i else 0), ro * ri * kh * kw, (o * ro if ro < o else 0)
            return first + core + last, pin * first + pout * (core + last)
        r = rank[0]
        if method == "spatial":
            return r * i * kh + o * r * kw, pmid * r * i * kh + pout * o * r * kw
        return r * (i * kh * kw + o), pout * r * (i * kh * kw + o)


def _size(d: Any) -> int:
    """A size as an int: a symbolic one at its example value."""
    if isinstance(d, torch.SymInt):
        hint = d.node.hint
        return int(hint) if hint is not None else 1
    return int(d)


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(_size(d) for d in val.shape) if isinstance(val, torch.Tensor) else None


def _weight_users(graph: Graph) -> Counter[str]:
    return Counter(str(n.target) for n in graph.nodes("get_attr") for _ in n.users)


def _why_alone(graph: Graph, op: torch.fx.Node, args: dict[str, Any], uses: Counter[str]) -> str | None:
    w = args.get("weight")
    if packet(op) in CONV_TRANSPOSE or args.get("transposed"):
        return "a transposed conv"
    if packet(op) in CONV and op.target != aten.conv2d.default:
        return (
            "string padding" if op.target == aten.conv2d.padding else f"{packet(op)._qualified_op_name}: 2-D convs only"
        )
    if not isinstance(w, torch.fx.Node) or w.op != "get_attr" or not graph.param(w).is_floating_point():
        return "its weight is computed, not a float parameter"
    if uses[str(w.target)] > 1:
        return f"its weight is shared by {uses[str(w.target)]} ops"
    if op.target == aten.conv2d.default and args.get("groups", 1) != 1:
        return f"a grouped conv (groups={args['groups']})"
    if op.target == aten.linear.default and graph.param(w).dim() != 2:
        return "a linear weight of rank != 2"
    return None


def find_layers(graph: Graph) -> list[Layer]:
    """Every linear and conv op with a weight operand, in graph order (see `Layer`)."""
    uses = _weight_users(graph)
    found: list[Layer] = []
    for op in graph.nodes("call_function"):
        if op.target != aten.linear.default and packet(op) not in CONV | CONV_TRANSPOSE:
            continue
        args = bind(op.target, op.args, op.kwargs)
        w = args.get("weight")
        if not isinstance(w, torch.fx.Node):
            continue
        shape = _shape(w) or ()
        factor = notes.get(w, LowRankFactor.key)
        path = module_path(op)
        names = tuple(dict.fromkeys(n for n in (path, op.name, str(w.target)) if n))
        layer = Layer(path or op.name, names, op, "linear" if op.target == aten.linear.default else "conv2d", shape)
        if isinstance(factor, LowRankFactor):
            found.append(_replace(layer, name=factor.layer, names=(factor.layer, *names), factor=factor))
            continue
        alone = _why_alone(graph, op, args, uses)
        if alone is not None:
            found.append(_replace(layer, kind=op_kind(op), alone=alone))
            continue
        found.append(_with_geometry(layer, args))
    counts = Counter(x.name for x in found if x.factor is None)
    return [_replace(x, name=x.op.name) if x.factor is None and counts[x.name] > 1 else x for x in found]


def op_kind(op: torch.fx.Node) -> str:
    return str(getattr(packet(op), "_qualified_op_name", op.target)).removeprefix("aten::")


def _replace(layer: Layer, **changes: Any) -> Layer:
    return dataclasses.replace(layer, **changes)


def _with_geometry(layer: Layer, args: dict[str, Any]) -> Layer:
    out = _shape(layer.op) or (1,)
    if layer.kind == "linear":
        rows = math.prod(out[:-1])
        return _replace(layer, positions=(rows, rows, rows))
    x = _shape(args["input"]) or out

    def pair(v: Any) -> tuple[int, int]:
        v = list(v) if isinstance(v, list | tuple) else [v]
        return (int(v[0]), int(v[-1]))

    geometry = ConvGeometry(pair(args["stride"]), pair(args["padding"]), pair(args["dilation"]))
    lead = math.prod(out[:-3])
    positions = (math.prod(x[:-3]) * x[-2] * x[-1], lead * out[-2] * x[-1], lead * out[-2] * out[-1])
    return _replace(layer, geometry=geometry, positions=positions)


# -- the plan ------------------------------------------------------------------------------------------


@dataclass
class LayerPlan:
    """What the request does to one layer: the rank chosen and its costs, or why it stays."""

    layer: str
    op: str  # the op node's name
    kind: str
    shape: tuple[int, ...]
    status: str  # FACTORIZE, or why the layer stays as it is
    method: str = ""
    rank: tuple[int, ...] = ()
    chosen_by: str = ""  # ranks, energy=E, ratio=R
    weights: tuple[int, int] = (0, 0)  # before, after
    macs: tuple[int, int] = (0, 0)  # before, after (on the graph's example inputs)
    error: float | None = None  # ||W - W_r||_F / ||W||_F
    weight: str = ""  # the parameter path of the weight it replaces
    factorization: Factorization | None = field(default=None, repr=False, compare=False)

    @property
    def factorized(self) -> bool:
        return self.status == FACTORIZE


def _near(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=5, cutoff=0.5)
    shown = close or names[:12]
    more = "" if close or len(names) <= 12 else f", ... ({len(names)} in all)"
    return f"{'near names' if close else 'the layers are'}: {', '.join(shown) or '(none)'}{more}"


def _check_names(graph: Graph, request: LowRankRequest, layers: list[Layer]) -> None:
    every = sorted({n for x in layers for n in x.names})
    shown = list(dict.fromkeys(x.name for x in layers))
    named = [(n, "ranks") for n, _ in request.rank_table()]
    if request.layers is not None:
        named.append((request.layers, "layers"))
    for regex, option in named:
        if not any(re.fullmatch(regex, n) for n in every):
            raise UnknownLayerError(
                f"{option} names {regex!r}, which matches no linear or conv layer of {graph.model_name}; "
                f"{_near(regex, shown)}"
            )


def _round_up(r: int, multiple: int, bound: int) -> int:
    return min(-(-r // multiple) * multiple, bound)


def _round_down(r: int, multiple: int) -> int:
    return (r // multiple) * multiple or r


def _fits(layer: Layer, method: str, rank: tuple[int, ...], ratio: float) -> bool:
    w, m = layer.cost(method, rank)
    return w <= ratio * layer.weights and m <= ratio * layer.macs


def _ratio_rank(layer: Layer, method: str, ratio: float, multiple: int) -> tuple[int, ...] | None:
    """The largest rank (tucker2: ranks in proportion to the channels) whose factors fit `ratio`."""
    bound = layer.bound(method)
    if method != "tucker2":
        fitting = [r for r in range(bound[0], 0, -1) if _fits(layer, method, (r,), ratio)]
        if not fitting:
            return None
        return (_round_down(fitting[0], multiple),)
    i, o = bound

    def pair(ro: int, step: int) -> tuple[int, int]:
        ri = max(step, round(ro * i / o / step) * step) if i >= step else i
        return (min(ri, i), ro)

    for step in (multiple, 1):  # multiples of the kernel width first, then any rank
        for ro in range(o - o % step, 0, -step):
            if _fits(layer, method, pair(ro, step), ratio):
                return pair(ro, step)
    return None


def _check_bound(layer: Layer, method: str, rank: tuple[int, ...]) -> tuple[int, ...]:
    bound = layer.bound(method)
    what = {
        "tucker2": "(input channels, output channels)",
        "spatial": "min(in channels x kh, out channels x kw)",
        "svd": "min(out, in)" if layer.kind == "linear" else "min(out channels, in channels x kh x kw)",
    }[method]
    if method == "tucker2" and len(rank) == 1:
        rank = (rank[0], rank[0])
    if method != "tucker2" and len(rank) != 1:
        raise RankError(f"layer {layer.name!r} takes one rank ({method}), got {'x'.join(map(str, rank))}")
    if any(r > b for r, b in zip(rank, bound, strict=True)):
        shown = "x".join(map(str, rank))
        raise RankError(
            f"rank {shown} for layer {layer.name!r} ({layer.kind} {list(layer.shape)}, {method}) is above "
            f"{what} = {'x'.join(map(str, bound))}; give a rank from 1 to that"
            + (" (RINxROUT for tucker2)" if method == "tucker2" else "")
        )
    return rank


def _factorize(
    weight: torch.Tensor, layer: Layer, method: str, rank: tuple[int, ...], whitening: Whitening | None = None
) -> Factorization:
    if method == "tucker2":
        assert layer.geometry is not None
        return tucker2_factors(weight, rank[0], rank[1], layer.geometry)
    if method == "spatial":
        assert layer.geometry is not None
        return spatial_factors(weight, rank[0], layer.geometry)
    return svd_factors(weight, rank[0], layer.geometry, whitening)


def plan_low_rank(graph: Graph, request: LowRankRequest) -> list[LayerPlan]:
    """One `LayerPlan` per linear / conv layer of `graph` (graph order); changes nothing."""
    layers = find_layers(graph)
    _check_names(graph, request, layers)
    table = request.rank_table()
    whitening = _whitenings(graph, request, layers)
    rows: list[LayerPlan] = []
    seen_factored: set[str] = set()
    for layer in layers:
        row = LayerPlan(layer.name, layer.op.name, layer.kind, layer.shape, "")
        if layer.factor is not None:
            if layer.name in seen_factored:
                continue
            seen_factored.add(layer.name)
            f = layer.factor
            row.status, row.method, row.rank = f"already low-rank ({f.stages} stages)", f.method, f.rank
            rows.append(row)
            continue
        if layer.alone is not None:
            row.status = f"left alone: {layer.alone}"
            rows.append(row)
            continue
        rows.append(_plan_layer(graph, request, layer, row, table, whitening.get(layer.op.name)))
    return rows


def _whitenings(graph: Graph, request: LowRankRequest, layers: list[Layer]) -> dict[str, Whitening]:
    """Each selected SVD layer's input whitening on `request.data` (none without data)."""
    if request.data is None:
        return {}
    ops = [
        x.op.name
        for x in layers
        if x.factor is None and x.alone is None and x.method(request.method) == "svd" and _selected(request, x) is None
    ]
    return {op: Whitening.of(m) for op, m in input_moments(graph, ops, request.data).items()}


def _selected(request: LowRankRequest, layer: Layer) -> str | None:
    """Why `layers` / `skip` leave the layer out, or None."""

    def hit(regex: str) -> bool:
        return any(re.fullmatch(regex, n) for n in layer.names)

    if request.layers is not None and not hit(request.layers):
        return "not in layers"
    skipped = next((r for r in request.skip if hit(r)), None)
    return f"skipped ({skipped})" if skipped is not None else None


def _plan_layer(
    graph: Graph,
    request: LowRankRequest,
    layer: Layer,
    row: LayerPlan,
    table: list[tuple[str, tuple[int, ...]]],
    whitening: Whitening | None,
) -> LayerPlan:
    method = layer.method(request.method)
    row.method, row.weight = method, str(bind(layer.op.target, layer.op.args, layer.op.kwargs)["weight"].target)
    row.weights, row.macs = (layer.weights, layer.weights), (layer.macs, layer.macs)
    why = _selected(request, layer)
    if why is not None:
        row.status = f"left alone: {why}"
        return row
    weight = graph.param(row.weight).detach()
    explicit = next((r for regex, r in table if any(re.fullmatch(regex, n) for n in layer.names)), None)
    rank: tuple[int, ...] | None
    if explicit is not None:
        rank, row.chosen_by = _check_bound(layer, method, explicit), "ranks"
    elif request.energy is not None:
        rank = _by_energy(weight, layer, method, request.energy, request.rank_multiple, whitening)
        row.chosen_by = f"energy={request.energy:g}"
    elif request.ratio is not None or not table:
        ratio = DEFAULT_RATIO if request.ratio is None else request.ratio
        rank, row.chosen_by = _ratio_rank(layer, method, ratio, request.rank_multiple), f"ratio={ratio:g}"
        if rank is None:
            row.status = f"left alone: no rank fits ratio {ratio:g}"
            return row
    else:
        row.status = "left alone: no rank given (set energy or ratio for layers without one)"
        return row
    row.rank = rank
    after = layer.cost(method, rank)
    row.weights, row.macs = (layer.weights, after[0]), (layer.macs, after[1])
    if after[0] >= layer.weights or after[1] >= layer.macs:
        row.status = f"left alone: factors not smaller ({after[0]} weights, {after[1]} MACs)"
        if method != "tucker2" and whitening is None:
            spectrum = spatial_spectrum(weight) if method == "spatial" else svd_spectrum(weight)
            row.error = tail_error(spectrum, rank[0])
        return row
    row.factorization = _factorize(weight, layer, method, rank, whitening)
    if whitening is not None:
        row.chosen_by += ", data-aware"
    row.error = row.factorization.relative_error(weight)
    row.status = FACTORIZE
    return row


def _by_energy(
    weight: torch.Tensor, layer: Layer, method: str, energy: float, multiple: int, whitening: Whitening | None
) -> tuple[int, ...]:
    bound = layer.bound(method)
    if method == "tucker2":
        spectra = tucker_spectra(weight)
        return tuple(_round_up(energy_rank(s, energy), multiple, b) for s, b in zip(spectra, bound, strict=True))
    spectrum = spatial_spectrum(weight) if method == "spatial" else svd_spectrum(weight, whitening)
    return (_round_up(energy_rank(spectrum, energy), multiple, bound[0]),)
