"""observe: mark the activations and weights of quantizable ops with the observer that will range them.

    %y = aten.linear(%x, %w, %b)      ->  %y  # observe act minmax i8 affine
                                          %x  # observe act minmax i8 affine
                                          %w  # observe weight minmax i8 sym ch0; qparams ...
    %z = aten.view(%y, ...)           ->  %z  # observe act shared     (z's values are y's)

Quantizable ops (the roots): ``aten.linear``, ``aten.conv2d`` (regular,
depthwise, grouped), ``aten.matmul`` / ``aten.bmm`` (attention), ``aten.add``
of two tensors (residuals) and ``aten.cat``. Each root's tensor inputs and its
output are observed. A constant operand (a ``get_attr``) is a weight: int8,
symmetric (zero point 0, as integer kernels want), per output channel when
``per-channel=true`` (axis 0 of linear / conv weights, the last axis of a
matmul's right operand), ranged by ``weight-observer`` (``auto``: min-max, or ``mse`` for log weights;
``mse`` clips outlier weights where that lowers the error); its parameters are computed
here, since weights are constants. ``weight-reduce-range=true`` gives weights
7 bits ([-64, 63]): then no pair of them can saturate AVX2's ``vpmaddubsw``,
and the x86 backend runs the layer on its u8s8 kernel, ~1.6x faster than the
exact int16 one (kernels/int8_avx2.py); the cost is one bit of weight
resolution (all-MiniLM-L6-v2: cosine 0.9939 vs 0.9945 with 8 bits), where
7-bit activations (``reduce-range``, torch.ao's fbgemm choice) cost far more
(0.980). ``weight-bits=N`` (2 to 8) gives weights the symmetric N-bit range
[-(2^(N-1)-1), 2^(N-1)-1] (4 bits: [-7, 7]; 2 bits: [-1, 1], ternary), for
quantization-aware training (``qat``) or to measure what fewer bits cost;
they run on the int8 kernels and are stored packed in the artifact.
``weight-scheme=log`` (with ``weight-bits`` 2, 3 or 4) restricts the weights'
integers to zero and signed powers of two (4 bits: {0, +-1, +-2, ..., +-64} x
scale; `fxpress.quant.scheme` says what each width means): the same int8
kernels compute them exactly, and each weight's scale is the one with the
least squared rounding error over a search (``weight-observer=auto``, the
default, is ``mse`` for log weights and ``minmax`` for uniform ones). Log
levels are for weights only; activations stay uniform. A log-scheme weight
that is zero throughout is refused, naming the layer (skip it). Activations get one scheme (``dtype``,
``symmetric``, ``reduce-range``) and one observer kind (``observer``: minmax,
moving-average, histogram, percentile, mse, entropy), per tensor.
``percentile`` (in (50, 100], checked whichever observers are chosen) is the
percentile of both ``observer=percentile`` and ``weight-observer=percentile``.
``power-of-two=true`` restricts every scale to a power of two.

Quantization-preserving ops after an observed value are observed too, so a
chain conv -> relu -> max-pool -> flatten -> linear stays quantized:
``relu`` gets its own observer (its range is [0, max]); reshape-like ops,
permutes, transposes, slices and max-pool output some of their input's values,
so they get a *shared* slot (the input's parameters, exactly).

``dynamic=[regex]`` picks linears whose input is quantized at run time, per
row (each token its own uint8 range: ``fxpress.dynamic_quantized_linear``,
float in and out): only their weight is observed here, nothing is calibrated.
It is for a layer whose input range varies from token to token so much that
one static range fails it: all-MiniLM-L6-v2's FFN down-projections (GELU
outputs) lose cosine 0.99 -> 0.95 with a static range, and keep 0.999 per row.

Nodes are selected by op kind (``ops``), and by regexes searched in the node's
name and its module path (``only`` picks roots, ``skip`` any node):
``observe{skip=[fc2]}`` keeps the module ``fc2`` in float. Observers are recorded as configuration (annotations),
not inserted into the graph: the IR keeps operator calls only, and
``calibrate`` builds fresh observers from the slots each time it runs.

Requires: nothing (run ``fold-bn`` first, so weights are final).
Establishes: ``observed``; invalidates ``calibrated`` (activation parameters
from an earlier calibration are dropped). Numerics: exact (nothing is computed
differently; once ``fold-qdq`` applies the weight parameters recorded here,
min-max moves each weight by at most half a step, ``mse`` may clip outliers). Leaves alone: graphs without a
quantizable op, skipped ops, non-float values. Sits after fold-bn and before
``calibrate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx

from fxpress.errors import PassError
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.ir.opsets import module_path
from fxpress.ir.printer import locate
from fxpress.ir.properties import Property
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.quant.annotations import DynamicQuant, ObserverSlot, QuantParams
from fxpress.quant.observers import OBSERVERS, ObserverSpec
from fxpress.quant.opsets import OWN_RANGE, QUANTIZABLE, SHARED_PARAMS
from fxpress.quant.scheme import LEVELS, LOG_BITS, QScheme, log_bits_message

_WEIGHT_AXIS = {"linear": 0, "conv2d": 0}  # kind -> per-channel axis of args[1]; matmul/bmm: its last axis


def _is_float(node: object) -> bool:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_floating_point()


@dataclass(frozen=True)
class Observe(Pass):
    """Attach observer slots to quantizable values (see the module docstring)."""

    name = "observe"
    establishes = frozenset({Property.OBSERVED})
    invalidates = frozenset({Property.CALIBRATED})
    per_channel: bool = False
    symmetric: bool = False
    dtype: str = "int8"
    observer: str = "minmax"
    weight_observer: str = "auto"
    power_of_two: bool = False
    reduce_range: bool = False
    weight_reduce_range: bool = False
    weight_scheme: str = "uniform"
    weight_bits: int = 8
    averaging_constant: float = 0.01
    percentile: float = 99.99
    ops: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ops) - set(QUANTIZABLE.values()))
        if unknown:
            raise ValueError(
                f"ops {unknown} are not quantizable; valid: {', '.join(sorted(set(QUANTIZABLE.values())))}"
            )
        for pattern in (*self.skip, *self.only, *self.dynamic):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        if not 50 < self.percentile <= 100:  # whether or not an observer uses it: out of range is out of range
            raise ValueError(
                f"percentile must be in (50, 100], got {self.percentile} "
                "(the percentile of observer=percentile and weight-observer=percentile)"
            )
        self.activation_spec()  # validates dtype, observer and its options
        if self.weight_scheme not in LEVELS:
            raise ValueError(f"weight-scheme must be one of {', '.join(LEVELS)}, got {self.weight_scheme!r}")
        if self.weight_scheme == "log" and self.weight_bits not in LOG_BITS:
            raise ValueError(
                f"weight-scheme=log: weight-bits={self.weight_bits}, but {log_bits_message(self.weight_bits)}"
            )
        if self.weight_scheme == "log" and self.weight_reduce_range:
            raise ValueError("weight-scheme=log sets the weights' levels; drop weight-reduce-range")
        if not isinstance(self.weight_bits, int) or not 2 <= self.weight_bits <= 8:
            raise ValueError(f"weight-bits must be an integer from 2 to 8, got {self.weight_bits!r}")
        if self.weight_bits < 8 and self.weight_reduce_range:
            raise ValueError(
                f"weight-reduce-range (7-bit weights) and weight-bits={self.weight_bits} both set the weights' "
                "range; give one (weight-bits=7 is the symmetric 7-bit range)"
            )
        if self.weight_observer != "auto" and self.weight_observer not in OBSERVERS:
            raise ValueError(
                f"weight-observer must be one of auto, {', '.join(OBSERVERS)}, got {self.weight_observer!r}"
            )
        self.weight_spec(0)

    def activation_spec(self) -> ObserverSpec:
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {self.observer!r}")
        scheme = QScheme(self.dtype, self.symmetric, None, self.power_of_two, self.reduce_range)
        return ObserverSpec(self.observer, scheme, self.averaging_constant, self.percentile)

    def weight_spec(self, axis: int | None) -> ObserverSpec:
        axis = axis if self.per_channel else None
        log = self.weight_scheme == "log"
        kind = self.weight_observer if self.weight_observer != "auto" else ("mse" if log else "minmax")
        if log:  # zero and +-2^k up to 2^K: 4 bits [-64, 64], 3 bits [-4, 4], 2 bits [-1, 1]
            scheme = QScheme.log(self.weight_bits, axis, self.power_of_two)
        elif self.weight_bits < 8:  # the symmetric narrow range: 4 bits [-7, 7], 2 bits [-1, 1] (ternary)
            top = 2 ** (self.weight_bits - 1) - 1
            scheme = QScheme("int8", True, axis, self.power_of_two, False, -top, top)
        else:
            scheme = QScheme("int8", True, axis, self.power_of_two, self.weight_reduce_range)
        return ObserverSpec(kind, scheme, percentile=self.percentile)

    @staticmethod
    def _matches(node: torch.fx.Node, patterns: tuple[str, ...]) -> bool:
        """Some regex of `patterns` is found in the node's name or its module path."""
        names = [s for s in (node.name, module_path(node)) if s]
        return any(re.search(p, s) for p in patterns for s in names)

    def _selected(self, node: torch.fx.Node, root: bool) -> bool:
        """Not skipped; and for a root, matched by `only` when given (preserving ops follow their input)."""
        if root and self.only and not self._matches(node, self.only):
            return False
        return not self._matches(node, self.skip)

    def _operands(self, node: torch.fx.Node, kind: str) -> list[tuple[torch.fx.Node, int | None]]:
        """(operand, weight axis or None) for the float tensor inputs of a root."""
        if kind == "cat":
            args = list(node.args[0]) if isinstance(node.args[0], list | tuple) else []
        else:
            args = list(node.args[:2])
        out = []
        for i, a in enumerate(args):
            if not _is_float(a):
                continue
            axis = _WEIGHT_AXIS.get(kind) if i == 1 else None
            if kind in ("matmul", "bmm") and i == 1:
                axis = a.meta["val"].dim() - 1
            out.append((a, axis))
        return out

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        act = self.activation_spec()
        slots: dict[torch.fx.Node, ObserverSlot] = {}
        weights: dict[torch.fx.Node, QuantParams] = {}
        dynamic: set[torch.fx.Node] = set()
        for node, kind in self._roots(graph):
            runtime = kind == "linear" and self._matches(node, self.dynamic)  # its activations: ranged per row
            for operand, axis in self._operands(node, kind):
                if operand.op == "get_attr":
                    spec = self.weight_spec(axis)
                    slots[operand] = ObserverSlot("weight", spec)
                    weights[operand] = self._weight_params(graph, operand, spec, node)
                elif not runtime:
                    slots.setdefault(operand, ObserverSlot("activation", act))
            if runtime:
                dynamic.add(node)
            else:
                slots[node] = ObserverSlot("activation", act)
        for node in graph.nodes("call_function"):  # then forward through preserving ops, in order
            src = node.args[0] if node.args else None
            if not isinstance(src, torch.fx.Node) or src not in slots or slots[src].role != "activation":
                continue
            if not _is_float(node) or not self._selected(node, root=False):
                continue
            if node.target in SHARED_PARAMS:
                slots[node] = ObserverSlot("activation", shared=True)
            elif node.target in OWN_RANGE:
                slots[node] = ObserverSlot("activation", act)
        modified = self._apply(graph, slots, weights, dynamic)
        shared = sum(1 for s in slots.values() if s.shared)
        stats = {"activations": len(slots) - len(weights) - shared, "shared": shared, "weights": len(weights)}
        if dynamic:
            stats["dynamic"] = len(dynamic)
        return PassResult(graph, modified=modified, stats=stats)

    def _roots(self, graph: Graph) -> list[tuple[torch.fx.Node, str]]:
        """The selected quantizable ops and their kinds."""
        roots = []
        for node in graph.nodes("call_function"):
            kind = QUANTIZABLE.get(node.target)
            if kind is None or (self.ops and kind not in self.ops) or not _is_float(node):
                continue
            if not self._selected(node, root=True):
                continue
            if kind == "add" and not all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
                continue  # x + scalar: not a tensor add
            roots.append((node, kind))
        return roots

    def _weight_params(
        self, graph: Graph, node: torch.fx.Node, spec: ObserverSpec, layer: torch.fx.Node
    ) -> QuantParams:
        weight = graph.param(node)
        if not bool(torch.isfinite(weight).all()):
            raise PassError(
                f"weight {node.target!r} holds NaN or Inf; it cannot be quantized",
                node=node.name,
                notes=[locate(graph, node)],
            )
        if spec.scheme.log_levels and not bool(weight.any()):
            where = module_path(layer) or layer.name
            raise PassError(
                f"weight {node.target!r} of layer {where!r} ({layer.target}) is zero throughout: log levels "
                f"(weight-scheme=log) have no scale to fit and the layer computes only its bias; keep it in float "
                f"with observe{{skip=[{where}]}} (or remove the layer)",
                node=layer.name,
                notes=[locate(graph, layer)],
            )
        observer = spec.make()
        observer.observe(weight)
        return observer.qparams()

    def _apply(
        self,
        graph: Graph,
        slots: dict[torch.fx.Node, ObserverSlot],
        weights: dict[torch.fx.Node, QuantParams],
        dynamic: set[torch.fx.Node],
    ) -> bool:
        """Write the slots, weight parameters and dynamic marks; drop stale ones. True if anything changed."""
        modified = False
        for node in graph.nodes():
            mine = notes.annotations(node) if notes.META_KEY in node.meta else {}
            wanted = {
                ObserverSlot.key: slots.get(node),
                QuantParams.key: weights.get(node),
                DynamicQuant.key: DynamicQuant() if node in dynamic else None,
            }
            for key, value in wanted.items():
                if mine.get(key) == value:
                    continue
                modified = True
                if value is None:
                    del mine[key]
                else:
                    notes.annotate(node, value)
        return modified
