"""The real scale and zero point of every int8 value in a folded graph, for formats that need them (ONNX QDQ).

fold-qdq's integer ops carry what the arithmetic needs, not every scale:

    quantize(x, s, z, qmin, qmax)                   s, z of its int8 output
    dequantize(q, s, z)                             s, z of its int8 input
    quantized_linear / _conv2d(xq, zx, w, b, mult, shift, zy)   M[n] = sx * sw[n] / sy  (Q31: mult * 2^-(31+shift))
    quantized_linear_float / _conv2d_float(xq, zx, w, b, scale) scale[n] = sx * sw[n]
    quantized_matmul(a, za, b, zb, mult, shift, zy) M = sa * sb / sy
    quantized_matmul_float(a, za, b, zb, scale)     scale = sa * sb

A QDQ model needs each int8 activation's scale and each weight row's scale.
The int8 values are grouped into *classes*: an integer op's output together
with the views, permutes and max-pools of it (they move or max values, so the
parameters hold unchanged). A class's scale is known where the graph meets
float, from its quantize or a dequantize; a class that flows from one integer
op straight into others (attention's Q, K, V; a linear feeding a linear) has
only the multipliers above, which fold-qdq computed from a calibrated scale it
did not keep. Such a scale is solved from the matmul equations where they fix
it, else chosen: the producing op's input scale, after which the weight scales
follow from the multipliers (``sw[n] = M[n] * sy / sx``). Any choice gives the
same integers: every integer result depends on the products ``sx * sw[n] /
sy`` and ``sx * sw[n]`` only, which are fold-qdq's own. `Int8Scales.chosen`
lists the classes whose scale was chosen, so a report can say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from fxpress.errors import ExportError
from fxpress.ir.graph import Graph

fx_ops = torch.ops.fxpress
REQUANT = {fx_ops.quantized_linear.default, fx_ops.quantized_conv2d.default}  # int8 out, weight rows
FLOAT_OUT = {fx_ops.quantized_linear_float.default, fx_ops.quantized_conv2d_float.default}  # float out, weight rows
MATMULS = {fx_ops.quantized_matmul.default, fx_ops.quantized_matmul_float.default}  # two int8 activations
INT8_SOURCES = {fx_ops.quantize.default, fx_ops.quantized_matmul.default, *REQUANT}  # ops that make a new int8 value
_REL_TOL = 1e-5  # fold-qdq's Q31 multipliers are exact to 2^-30; scales pass through float32 once


def is_int8(node: Any) -> bool:
    """A computed (not a parameter) int8 tensor: an activation in the integer domain."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return node.op == "call_function" and isinstance(val, torch.Tensor) and val.dtype == torch.int8


@dataclass(eq=False)  # one object per class: compared and hashed by identity
class Int8Class:
    """One int8 value and the values that only move it: one scale, one zero point, one range."""

    root: torch.fx.Node
    zero_point: int | None = None
    scale: float | None = None
    qrange: tuple[int, int] = (-128, 127)
    chosen: bool = False


@dataclass
class Int8Scales:
    """Each int8 node's class, and each integer op's weight row scales (float64)."""

    classes: dict[torch.fx.Node, Int8Class] = field(default_factory=dict)
    weight_scales: dict[torch.fx.Node, torch.Tensor] = field(default_factory=dict)

    def of(self, node: torch.fx.Node) -> Int8Class:
        return self.classes[node]

    @property
    def chosen(self) -> list[str]:
        """The int8 values (their first node's name) whose scale the graph did not fix."""
        return [c.root.name for c in dict.fromkeys(self.classes.values()) if c.chosen]


def node_args(node: torch.fx.Node) -> Any:
    """A node's positional arguments, untyped: fxpress's ops fix what each position holds."""
    return node.args


def _fail(node: torch.fx.Node, message: str) -> ExportError:
    return ExportError(f"{node.name} ({node.target}): {message}", node=node.name)


def _real_multiplier(mult: Any, shift: Any) -> torch.Tensor:
    """Q31 ``mult * 2^-(31 + shift)`` as float64 (per row or one)."""
    m = torch.as_tensor(mult, dtype=torch.float64)
    s = torch.as_tensor(shift, dtype=torch.float64)
    return m * torch.pow(2.0, -(31.0 + s))


def _agree(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL)


class _Solver:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.result = Int8Scales()

    # -- classes ------------------------------------------------------------------
    def group(self) -> None:
        """Give every int8 node its class; collect zero points, ranges and the scales the graph states."""
        classes = self.result.classes
        for node in self.graph.nodes("call_function"):
            if not is_int8(node):
                continue
            if node.target in INT8_SOURCES:
                classes[node] = Int8Class(node)
            else:  # an op that moves int8 values: it must read exactly one int8 activation
                sources = [a for a in node.all_input_nodes if is_int8(a)]
                if len(sources) != 1:
                    raise _fail(
                        node,
                        f"computes an int8 value from {len(sources)} int8 inputs; the export knows int8 ops that "
                        "only move or max one input's values (views, permutes, max-pool) and fxpress's integer ops",
                    )
                classes[node] = classes[sources[0]]
        for node in self.graph.nodes("call_function"):
            self._evidence(node)

    def _state(self, node: Any, scale: float | None, zero_point: int) -> None:
        """`node` (an int8 value) has this zero point and, if given, this scale."""
        if not isinstance(node, torch.fx.Node) or node not in self.result.classes:
            raise ExportError(f"expected an int8 value, got {node!r}")
        cls = self.result.classes[node]
        if cls.zero_point is None:
            cls.zero_point = zero_point
        elif cls.zero_point != zero_point:
            raise _fail(node, f"int8 value read with zero points {cls.zero_point} and {zero_point}")
        if scale is None:
            return
        if cls.scale is None:
            cls.scale = scale
        elif not _agree(cls.scale, scale):
            raise _fail(node, f"int8 value read with scales {cls.scale:.6g} and {scale:.6g}")

    def _evidence(self, node: torch.fx.Node) -> None:
        args = node_args(node)
        if node.target == fx_ops.quantize.default:
            self._state(node, float(args[1]), int(args[2]))
            self.result.classes[node].qrange = (int(args[3]), int(args[4]))
        elif node.target == fx_ops.dequantize.default:
            self._state(args[0], float(args[1]), int(args[2]))
        elif node.target in REQUANT:
            self._state(args[0], None, int(args[1]))
            self._state(node, None, int(args[6]))
        elif node.target in FLOAT_OUT:
            self._state(args[0], None, int(args[1]))
        elif node.target in MATMULS:
            self._state(args[0], None, int(args[1]))
            self._state(args[2], None, int(args[3]))
            if node.target == fx_ops.quantized_matmul.default:
                self._state(node, None, int(args[6]))

    # -- solving ------------------------------------------------------------------
    def _matmul_step(self, node: torch.fx.Node) -> bool:
        """Fill the one unknown of ``sa * sb = M * sy`` (or ``= scale``); True if something was filled."""
        classes, args = self.result.classes, node_args(node)
        a, b = classes[args[0]], classes[args[2]]
        if node.target == fx_ops.quantized_matmul.default:
            y: Int8Class | None = classes[node]
            rhs_factor = float(_real_multiplier(args[4], args[5]))
        else:
            y, rhs_factor = None, float(args[4])
        unknown = list(dict.fromkeys(c for c in (a, b, y) if c is not None and c.scale is None))  # a may be b
        if len(unknown) != 1:
            return False
        cls = unknown[0]
        if cls is y:
            assert a.scale is not None and b.scale is not None
            cls.scale = a.scale * b.scale / rhs_factor
        else:
            other = b if cls is a else a
            target = rhs_factor * (y.scale if y is not None and y.scale is not None else 1.0)
            assert other.scale is not None
            cls.scale = target / other.scale if cls is not other else math.sqrt(target)
        return True

    def solve(self) -> None:
        """Scales for every class: stated, implied by a matmul, or chosen (see the module doc)."""
        classes = self.result.classes
        matmuls = [n for n in self.graph.nodes("call_function") if n.target in MATMULS]
        while True:
            while any(self._matmul_step(n) for n in matmuls):
                pass
            unknown = [c for c in dict.fromkeys(classes.values()) if c.scale is None]
            if not unknown:
                break
            pick = next((c for c in unknown if self._choose(c)), None)
            if pick is None:
                raise _fail(unknown[0].root, "cannot find a scale for this int8 value (its producer's is unknown)")
        for node in matmuls:
            self._check_matmul(node)

    def _choose(self, cls: Int8Class) -> bool:
        """Give `cls` its producer's input scale, if that is known; True if chosen."""
        root = cls.root
        if root.target not in REQUANT and root.target != fx_ops.quantized_matmul.default:
            return False
        source = self.result.classes[node_args(root)[0]]
        if source.scale is None:
            return False
        cls.scale, cls.chosen = source.scale, True
        return True

    def _check_matmul(self, node: torch.fx.Node) -> None:
        classes, args = self.result.classes, node_args(node)
        sa, sb = classes[args[0]].scale, classes[args[2]].scale
        assert sa is not None and sb is not None
        if node.target == fx_ops.quantized_matmul.default:
            sy = classes[node].scale
            assert sy is not None
            want, got = float(_real_multiplier(args[4], args[5])), sa * sb / sy
        else:
            want, got = float(args[4]), sa * sb
        if not _agree(want, got):
            raise _fail(
                node, f"its scales give {got:.6g} where the op holds {want:.6g}: the int8 graph is inconsistent"
            )

    def weights(self) -> None:
        """Each linear's or conv's weight row scales from its input and output scales."""
        classes = self.result.classes
        for node in self.graph.nodes("call_function"):
            if node.target not in REQUANT | FLOAT_OUT:
                continue
            args = node_args(node)
            sx = classes[args[0]].scale
            assert sx is not None
            if node.target in REQUANT:
                sy = classes[node].scale
                assert sy is not None
                m = _real_multiplier(self.graph.param(args[4]), self.graph.param(args[5]))
                self.result.weight_scales[node] = m * sy / sx
            else:
                self.result.weight_scales[node] = self.graph.param(args[4]).double() / sx


def int8_scales(graph: Graph) -> Int8Scales:
    """Every int8 value's class (scale, zero point, range) and every integer linear's or conv's weight scales."""
    solver = _Solver(graph)
    solver.group()
    solver.solve()
    solver.weights()
    return solver.result
