"""The pass contract: what every fxpress pass is, and the analysis cache it uses.

A pass is a frozen dataclass. Its fields are its options (typed, with
defaults), so a pass object *is* its configuration and prints back to pipeline
text. Class attributes declare:

- ``name``: the kebab-case name used in pipeline text (``fold-bn``);
- ``requires``: graph properties that must hold before it runs
  (``calibrated``), checked by the manager before anything runs;
- ``establishes``: properties that hold after it runs (``bn-folded``);
- ``invalidates``: properties it destroys (a pass that rewrites weights
  invalidates ``observed`` and ``calibrated``);
- ``forbids``: properties that must not hold when it runs (a pass that
  factorizes or clusters float weights forbids ``quantized``: run it before
  ``fold-qdq``), checked with ``requires``.

Properties are members of `fxpress.ir.properties.Property`, never bare strings.
``text()`` prints the pass back as pipeline text (`print_pass`); parsing lives
in ``pipeline.py``, above this module, which imports nothing else of fxpress's
passes.

``run(graph, am)`` edits `graph` in place (the manager hands it a private copy)
and returns a `PassResult`. ``modified`` must be honest: a second run of the
same pass on its own output reports ``modified=False`` (a contract test checks
every registered pass). Passes keep no state between runs.

Analyses (`Analysis`) are computed on demand through the `AnalysisManager` and
cached; after a pass reports ``modified=True`` every cached analysis is dropped
unless the pass names it in ``preserved`` (MLIR's rule).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from fxpress.ir.properties import Property  # at run time: typing.get_type_hints reads these annotations

if TYPE_CHECKING:
    from fxpress.ir.graph import Graph


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the graph, whether it changed, and what it kept."""

    graph: Graph
    modified: bool
    preserved: frozenset[str] = frozenset()
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    """Base class of all passes (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[Property]] = frozenset()
    establishes: ClassVar[frozenset[Property]] = frozenset()
    invalidates: ClassVar[frozenset[Property]] = frozenset()
    forbids: ClassVar[frozenset[Property]] = frozenset()

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    @classmethod
    def options(cls) -> list[dataclasses.Field[Any]]:
        """The pass's options: its dataclass fields, in declaration order."""
        return list(dataclasses.fields(cls))

    def text(self) -> str:
        """This pass as pipeline text: ``name{opt=value,...}`` (non-defaults only)."""
        return print_pass(self)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def print_pass(p: Pass) -> str:
    """One pass as text: options that differ from their defaults, in field order."""
    opts = []
    for f in dataclasses.fields(p):
        value = getattr(p, f.name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        if value != default:
            opts.append(f"{f.name.replace('_', '-')}={_format_value(value)}")
    return f"{p.name}{{{','.join(opts)}}}" if opts else p.name


class Analysis:
    """A fact computed from a graph on demand and cached until invalidated.

    Subclasses set ``name`` and implement ``compute(graph, am)``; the result
    is whatever object the analysis defines.
    """

    name: ClassVar[str] = ""

    @classmethod
    def compute(cls, graph: Graph, am: AnalysisManager) -> Any:
        raise NotImplementedError


A = TypeVar("A")


class AnalysisManager:
    """Caches analysis results for one graph; the pass manager invalidates them."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._cache: dict[str, Any] = {}
        self.computed: list[str] = []  # every computation, in order (tests read it)

    def get(self, analysis: type[Analysis]) -> Any:
        """The result of `analysis` on the current graph, computing it if needed."""
        if analysis.name not in self._cache:
            self.computed.append(analysis.name)
            self._cache[analysis.name] = analysis.compute(self.graph, self)
        return self._cache[analysis.name]

    def cached(self) -> frozenset[str]:
        return frozenset(self._cache)

    def invalidate(self, preserved: frozenset[str] = frozenset()) -> None:
        """Drop every cached result except those named in `preserved`."""
        self._cache = {k: v for k, v in self._cache.items() if k in preserved}

    def rebind(self, graph: Graph) -> None:
        """Point at the graph a pass returned (a pass may return a new object)."""
        if graph is not self.graph:
            self.graph = graph
            self._cache.clear()
