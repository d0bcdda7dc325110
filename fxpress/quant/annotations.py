"""The quantization facts passes attach to nodes: which observer watches a value, and its parameters.

- `ObserverSlot` (key ``observe``), set by the ``observe`` pass: this node's
  output (an activation) or this parameter (a weight) is to be quantized, and
  this observer configuration chooses its range. A *shared* slot (outputs of
  reshape, permute, max-pool, ...: ops whose outputs are some of their input's
  values) takes the parameters of its input instead of observing on its own.
- `QuantParams` (key ``qparams``): the scheme, scale and zero point. Weights get
  them from ``observe`` (weights are constants), activations from ``calibrate``.

Both are frozen and hold no observer state, so a graph stays deep-copyable and
every pass that writes them is a pure function of the graph and its inputs.
The verifier calls ``check`` after every pass: a per-channel scale must have
one entry per channel of the node's value, scales must be positive and finite,
zero points inside the integer range (and fixed for symmetric schemes), and
power-of-two scales exact powers of two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from fxpress.ir.annotations import META_KEY, Annotation, get
from fxpress.quant import scheme as _scheme
from fxpress.quant.scheme import QScheme

if TYPE_CHECKING:
    from fxpress.quant.observers import ObserverSpec

ROLES = ("activation", "weight")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _span(t: torch.Tensor, fmt: Any = _fmt) -> str:
    lo, hi = t.min().item(), t.max().item()
    return fmt(lo) if lo == hi else f"[{fmt(lo)}..{fmt(hi)}]"


@dataclass(frozen=True)
class ObserverSlot(Annotation):
    """This value is quantized; `spec` says how its range is observed (None when `shared`)."""

    key = "observe"
    role: str
    spec: ObserverSpec | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.shared == (self.spec is not None):
            raise ValueError("an ObserverSlot has a spec unless it is shared")

    def check(self, node: torch.fx.Node) -> str | None:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            return f"observes a value that is not a float tensor ({type(val).__name__})"
        if self.role == "weight" and node.op != "get_attr":
            return "a weight slot on a node that is not a parameter"
        if self.shared:
            src = node.args[0] if node.args else None
            if not isinstance(src, torch.fx.Node) or not isinstance(get(src, self.key), ObserverSlot):
                return "a shared slot whose input (args[0]) is not observed"
            return None
        assert self.spec is not None
        axis = self.spec.scheme.axis
        if axis is not None and axis >= val.dim():
            return f"per-channel axis {axis} but the value has {val.dim()} dimensions"
        return None

    def text(self) -> str:
        what = "shared" if self.spec is None else self.spec.text()
        return f"observe {'act' if self.role == 'activation' else 'weight'} {what}"


@dataclass(frozen=True, eq=False)
class QuantParams(Annotation):
    """Scale and zero point of one value under `scheme` (one entry, or one per channel)."""

    key = "qparams"
    scheme: QScheme
    scale: torch.Tensor
    zero_point: torch.Tensor

    @classmethod
    def from_range(cls, min_val: torch.Tensor, max_val: torch.Tensor, scheme: QScheme) -> QuantParams:
        """The parameters `scheme` gives the range [min_val, max_val] (`compute_qparams`)."""
        return cls(scheme, *_scheme.compute_qparams(min_val, max_val, scheme))

    @property
    def axis(self) -> int | None:
        return self.scheme.axis

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QuantParams)
            and self.scheme == other.scheme
            and torch.equal(self.scale, other.scale)
            and torch.equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # type: ignore[assignment]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return _scheme.quantize(x, self.scale, self.zero_point, self.scheme)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return _scheme.dequantize(q, self.scale, self.zero_point, self.scheme)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return _scheme.fake_quantize(x, self.scale, self.zero_point, self.scheme)

    def check(self, node: torch.fx.Node) -> str | None:
        scale, zp = self.scale, self.zero_point
        if scale.dtype != torch.float32 or zp.dtype != torch.int64 or scale.dim() != 1 or scale.shape != zp.shape:
            return f"scale must be 1-D float32 and zero_point 1-D int64 of the same length, got {scale.dtype}{list(scale.shape)} and {zp.dtype}{list(zp.shape)}"
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return f"quantization parameters on a node whose value is a {type(val).__name__}"
        if self.axis is None and scale.numel() != 1:
            return f"per-tensor parameters with {scale.numel()} scales"
        if self.axis is not None:
            if self.axis >= val.dim():
                return f"per-channel axis {self.axis} but the value has {val.dim()} dimensions"
            channels = val.shape[self.axis]
            if isinstance(channels, int) and scale.numel() != channels:
                return f"{scale.numel()} per-channel scales for {channels} channels (axis {self.axis})"
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            return f"scales must be positive and finite, got {_span(scale)}"
        qmin, qmax = self.scheme.qrange
        if bool(((zp < qmin) | (zp > qmax)).any()):
            return f"zero point {_span(zp, str)} outside the integer range [{qmin}, {qmax}]"
        if self.scheme.symmetric and bool((zp != self.scheme.symmetric_zero_point).any()):
            return f"a symmetric scheme needs zero point {self.scheme.symmetric_zero_point}, got {_span(zp, str)}"
        if self.scheme.power_of_two and not bool((torch.frexp(scale).mantissa == 0.5).all()):
            return f"power-of-two scheme with scales {_span(scale)} that are not powers of two"
        return None

    def text(self) -> str:
        return f"qparams {self.scheme.text()} scale={_span(self.scale)} zp={_span(self.zero_point, str)}"


@dataclass(frozen=True)
class DynamicQuant(Annotation):
    """This linear quantizes its input at run time, per row (``fxpress.dynamic_quantized_linear``).

    Its weight carries a weight `ObserverSlot` and `QuantParams` as usual; its
    input and output carry none (nothing to calibrate).
    """

    key = "dynamic"

    def check(self, node: torch.fx.Node) -> str | None:
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            return "dynamic quantization on a node that is not aten.linear"
        return None

    def text(self) -> str:
        return "quantize act dynamic per-row u8"


QUANT_KEYS: tuple[str, ...] = (ObserverSlot.key, QuantParams.key, DynamicQuant.key)
"""The annotations ``observe`` and ``calibrate`` write: what the ``observed`` and ``calibrated`` properties stand for."""


def drop_quant_annotations(nodes: Iterable[torch.fx.Node]) -> int:
    """Remove observer slots, quantization parameters and dynamic marks from `nodes`; the count of nodes changed.

    A float-weight pass that invalidates ``observed`` and ``calibrated``
    (prune-channels, low-rank) calls it on the whole graph when it changes
    something: parameters measured on the old weights and channels, and slots
    shared with values that are gone, must not outlive the properties (the
    verifier would find them inconsistent, and a later ``observe`` writes them
    all again anyway).
    """
    changed = 0
    for node in nodes:
        held = node.meta.get(META_KEY) or {}
        dropped = [held.pop(key) for key in QUANT_KEYS if key in held]
        changed += bool(dropped)
    return changed
