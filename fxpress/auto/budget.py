"""The budget a search must meet: an accuracy floor, or a latency or size ceiling.

    Budget(accuracy=0.99)            Budget.parse("accuracy>=0.99")
    Budget(latency_ms=4.0)           Budget.parse("latency<=4ms")
    Budget(size_bytes=200_000)       Budget.parse("size<=200KB")   (B, KB, KiB, MB, MiB)

Under an accuracy floor the best point is the fastest that meets it (then the
smallest); under a ceiling, the most accurate within it. `shortfall` says how
far a point misses (0 when it meets the budget), relative to the bound, so the
closest point can be named when none meets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from fxpress.auto.errors import AutoError

_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}
_TEXT = re.compile(r"\s*(accuracy|latency|size)\s*(>=|<=)\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*")


class Scored(Protocol):
    accuracy: float
    size_bytes: int

    @property
    def latency(self) -> float: ...


@dataclass(frozen=True)
class Budget:
    """Exactly one of: an accuracy floor, a latency ceiling (ms), a size ceiling (stored weight bytes)."""

    accuracy: float | None = None
    latency_ms: float | None = None
    size_bytes: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.accuracy, self.latency_ms, self.size_bytes) if v is not None]
        if len(given) != 1:
            raise AutoError(
                "give exactly one budget: an accuracy floor (Budget(accuracy=0.99), 'accuracy>=0.99'), a latency "
                "ceiling (Budget(latency_ms=4), 'latency<=4ms') or a size ceiling (Budget(size_bytes=2e5), "
                f"'size<=200KB'); got {self}"
            )
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise AutoError(f"a latency ceiling must be > 0 ms, got {self.latency_ms}")
        if self.size_bytes is not None and not self.size_bytes > 0:
            raise AutoError(f"a size ceiling must be > 0 bytes, got {self.size_bytes}")

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """``accuracy>=X``, ``latency<=Xms`` (ms, s, us) or ``size<=X[B|KB|KiB|MB|MiB]``."""
        if isinstance(text, Budget):
            return text
        m = _TEXT.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise AutoError(f"cannot read the budget {text!r}; write accuracy>=0.99, latency<=4ms or size<=200KB")
        kind, op, number, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4).lower()
        if (kind == "accuracy") != (op == ">="):
            raise AutoError(f"budget {text!r}: accuracy takes a floor (>=), latency and size a ceiling (<=)")
        if kind == "accuracy":
            if unit:
                raise AutoError(f"budget {text!r}: an accuracy floor takes no unit")
            return cls(accuracy=number)
        if kind == "latency":
            scale = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3}.get(unit)
            if scale is None:
                raise AutoError(f"budget {text!r}: latency units are ms, s or us")
            return cls(latency_ms=number * scale)
        if unit not in ("", *_UNITS):
            raise AutoError(f"budget {text!r}: size units are B, KB, KiB, MB, MiB, GB, GiB")
        return cls(size_bytes=number * _UNITS.get(unit, 1))

    def text(self) -> str:
        if self.accuracy is not None:
            return f"accuracy>={self.accuracy:g}"
        if self.latency_ms is not None:
            return f"latency<={self.latency_ms:g}ms"
        return f"size<={self.size_bytes:g}B"

    def shortfall(self, point: Scored) -> float:
        """How far `point` misses the budget, relative to the bound (0: it meets it)."""
        if self.accuracy is not None:
            return max(0.0, self.accuracy - point.accuracy) / max(abs(self.accuracy), 1e-12)
        if self.latency_ms is not None:
            return max(0.0, point.latency - self.latency_ms) / self.latency_ms
        assert self.size_bytes is not None
        return max(0.0, point.size_bytes - self.size_bytes) / self.size_bytes

    def meets(self, point: Scored) -> bool:
        return self.shortfall(point) == 0.0

    def rank(self, point: Scored) -> tuple[float, ...]:
        """Sort key, best first, among points that meet the budget."""
        if self.accuracy is not None:
            return (point.latency, point.size_bytes, -point.accuracy)
        if self.latency_ms is not None:
            return (-point.accuracy, point.latency, point.size_bytes)
        return (-point.accuracy, point.size_bytes, point.latency)
