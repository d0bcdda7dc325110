"""The pass manager: runs an ordered pipeline, verifies, traces, instruments.

The order written is the order run: the manager never reorders. Before anything
runs it checks every pass's ``requires`` against the graph's properties and
what earlier passes establish (`check_order`), so an order error costs nothing.
It runs the passes on a private copy of the graph (the caller's graph is never
changed), and after each pass:

- regenerates the module code and drops cached analyses when the pass changed
  the graph (keeping those it lists in ``preserved``);
- verifies the graph (on by default; ``FXPRESS_VERIFY=0`` turns it off, and
  the test suite forces it on);
- in debug mode, runs the graph on its example inputs and records the largest
  absolute output drift against the previous stage;
- records a `TraceRecord` (wall time, op count and parameter bytes before and
  after, modified, the pass's stats) on the graph;
- calls its instruments (`PrintIRAfter`, `Timing`, `DumpIR`).

Errors keep their type and fields: an `FxpressError` leaving a pass (or the
check after it) is told where it happened (`FxpressError.in_pass`: the pass,
the passes before it) and raised again; any other exception becomes a
`PassError` carrying the same context, with the original as its cause. Pipeline
text is parsed against a `PassRegistry` (fxpress's own unless one is given).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch

from fxpress.errors import FxpressError, PassError
from fxpress.ir.graph import Graph, TraceRecord
from fxpress.passes.base import AnalysisManager, Pass, PassResult
from fxpress.passes.pipeline import PassRegistry, as_passes, check_order, print_pipeline
from fxpress.passes.registry import REGISTRY

log = logging.getLogger(__name__)


class Instrument:
    """Hooks the manager calls around each pass. Subclass and override."""

    def before_pass(self, p: Pass, graph: Graph) -> None:
        """Called before `p` runs on `graph`."""

    def after_pass(self, p: Pass, graph: Graph, record: TraceRecord) -> None:
        """Called after `p` ran and the graph was verified."""

    def after_pipeline(self, graph: Graph, records: Sequence[TraceRecord]) -> None:
        """Called once when the whole pipeline has run."""


class PrintIRAfter(Instrument):
    """Print the IR after every pass (``--print-ir-after-all``)."""

    def __init__(self, stream: TextIO | None = None, only_modified: bool = False) -> None:
        self.stream = stream
        self.only_modified = only_modified

    def after_pass(self, p: Pass, graph: Graph, record: TraceRecord) -> None:
        if self.only_modified and not record.modified:
            return
        stream = self.stream or sys.stderr
        print(f"// ----- IR after {record.pipeline} -----\n{graph}", file=stream)


class Timing(Instrument):
    """Print a per-pass timing table when the pipeline ends (``--timing``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after_pipeline(self, graph: Graph, records: Sequence[TraceRecord]) -> None:
        print(format_trace(records), file=self.stream or sys.stderr)


class DumpIR(Instrument):
    """Write the IR after every pass to ``DIR/NN-<pass>.txt`` (``--dump-ir DIR``)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.count = 0

    def before_pass(self, p: Pass, graph: Graph) -> None:
        if self.count == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "00-input.txt").write_text(str(graph) + "\n")

    def after_pass(self, p: Pass, graph: Graph, record: TraceRecord) -> None:
        self.count += 1
        (self.directory / f"{self.count:02d}-{p.name}.txt").write_text(str(graph) + "\n")


def format_trace(records: Sequence[TraceRecord]) -> str:
    """A text table of trace records: pass, time, ops and bytes, modified."""
    rows = [("pass", "ms", "ops", "param bytes", "modified")]
    for r in records:
        rows.append(
            (
                r.pipeline,
                f"{r.wall_s * 1e3:.1f}",
                f"{r.nodes_before}->{r.nodes_after}",
                f"{r.param_bytes_before}->{r.param_bytes_after}",
                "yes" if r.modified else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _verify_default() -> bool:
    return os.environ.get("FXPRESS_VERIFY", "1") != "0"


def _drift(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(before, after, strict=False):
        if a.shape != b.shape:
            return float("inf")
        if a.numel():
            worst = max(worst, float((a.double() - b.double()).abs().max()))
    return worst


class PassManager:
    """Runs passes in the order given (see the module docstring)."""

    def __init__(
        self,
        passes: str | Pass | Sequence[Pass | str],
        *,
        verify: bool | None = None,
        debug: bool = False,
        instruments: Sequence[Instrument] = (),
        registry: PassRegistry = REGISTRY,
    ) -> None:
        self.registry = registry
        self.passes = as_passes(passes, registry)
        self.verify = _verify_default() if verify is None else verify
        self.debug = debug
        self.instruments = list(instruments)

    @property
    def pipeline(self) -> str:
        """The pipeline as text, Python-only options (data, teachers) dropped: it parses back (`print_pipeline`)."""
        return print_pipeline(self.passes)

    def run(self, graph: Graph) -> Graph:
        """Run the pipeline on a copy of `graph` and return the result."""
        if not isinstance(graph, Graph):
            raise PassError(f"optimize() takes an fxpress Graph (from fxpress.capture), got {type(graph).__name__}")
        history = [r.pipeline.split("{")[0] for r in graph.trace]
        check_order(self.passes, graph.properties, self.registry, history)
        work = graph.copy()
        am = AnalysisManager(work)
        records: list[TraceRecord] = []
        reference = work.run_flat(*work.example_inputs) if self.debug else None
        for p in self.passes:
            for inst in self.instruments:
                inst.before_pass(p, work)
            ops, nbytes = work.num_ops, work.param_bytes
            start = time.perf_counter()
            result = self._run_one(p, work, am, history)
            work = result.graph
            am.rebind(work)
            if result.modified:
                am.invalidate(result.preserved)
            self._check(p, work, history, recompile=result.modified)
            wall = time.perf_counter() - start
            work.properties = (work.properties - p.invalidates) | p.establishes
            drift = None
            if reference is not None:
                outputs = work.run_flat(*work.example_inputs)
                drift, reference = _drift(reference, outputs), outputs
            record = TraceRecord(
                p.text(), wall, ops, work.num_ops, nbytes, work.param_bytes, result.modified, dict(result.stats), drift
            )
            work.trace.append(record)
            records.append(record)
            history.append(p.name)
            log.info("%s: %.1f ms, modified=%s", record.pipeline, wall * 1e3, result.modified)
            for inst in self.instruments:
                inst.after_pass(p, work, record)
        for inst in self.instruments:
            inst.after_pipeline(work, records)
        return work

    def _run_one(self, p: Pass, graph: Graph, am: AnalysisManager, history: list[str]) -> PassResult:
        try:
            result = p.run(graph, am)
        except FxpressError as exc:
            exc.in_pass(p.text(), history)
            raise  # the same object: its type, fields and traceback kept
        except Exception as exc:
            raise PassError(f"{type(exc).__name__}: {exc}").in_pass(p.text(), history) from exc
        if not isinstance(result, PassResult):
            raise PassError(f"returned {type(result).__name__}, not a PassResult").in_pass(p.text(), history)
        return result

    def _check(self, p: Pass, graph: Graph, history: list[str], *, recompile: bool) -> None:
        """Verify (or at least re-propagate shapes), then regenerate the code if it changed.

        Verification comes first: a graph that does not lint fails here as a
        `VerifyError` naming the pass, not inside ``recompile``.
        """
        try:
            if self.verify:
                graph.verify()
            if recompile:
                graph.recompile()
            if not self.verify:
                graph.propagate_shapes()
        except FxpressError as exc:
            exc.in_pass(p.text(), history, after=True)
            raise
        except Exception as exc:
            raise PassError(f"the graph is broken: {exc}").in_pass(p.text(), history, after=True) from exc


def optimize(
    graph: Graph,
    passes: str | Pass | Sequence[Pass | str],
    *,
    verify: bool | None = None,
    debug: bool = False,
    instruments: Sequence[Instrument] = (),
    registry: PassRegistry = REGISTRY,
) -> Graph:
    """Run `passes` (pass objects or pipeline text, parsed against `registry`) over a copy of `graph`."""
    return PassManager(passes, verify=verify, debug=debug, instruments=instruments, registry=registry).run(graph)
