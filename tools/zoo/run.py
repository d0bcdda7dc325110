"""The coverage-zoo runner: every entry through capture, fp32, int8, prune-channels and sparsify.

Each stage is a function of a `Subject` (the entry's model, inputs, captured graph and fp32 eager output)
that returns a short result text (the number it checked) or raises. `run_stage` turns what it raised
into a `StageResult`:

- ``ok``: the stage ran and its numbers are within tolerance (the cell shows them);
- ``n/a``: the stage does not apply (prune-channels on a model with no prunable channels);
- ``error``: an `FxpressError` (a clear, intended error): its class, first message line and node;
- ``raw``: any other exception, a defect of fxpress (or of the zoo): ``RAW <type>: ...``;
- ``wrong``: the stage ran but a number is over its tolerance (`WrongAnswer`): ``WRONG ...``;
- ``skip``: a stage it depends on (capture) failed.

The stages, and what each compares:

- capture: ``fxpress.capture(model, inputs)``.
- fp32: ``default`` (fold-bn, fold-constants, dce), compiled for ``x86``; max|compiled - eager| / max|eager|
  against the eager model, at most 1e-4.
- int8: the fp32 clean-up, then observe (per channel), calibrate on four batches made from the entry's
  inputs, fold-qdq; compiled against the eager run of the same int8 graph (exact is reported as such,
  a relative error up to 1e-4 passes), and the cosine of the int8 output to fp32 eager reported.
- prune: fold-bn, then prune-channels at 30 % (L1, per layer) with every *approximate* group protected
  (one whose channels a layer_norm, softmax or mean reduces: pruning it is not the zeroed model), exact
  (1e-4 relative) against the oracle: the fold-bn graph with the plan's channels zeroed in every member
  parameter; then compiled against the pruned graph. ``n/a`` when the entry says it has nothing prunable
  (`ZooEntry.prunable`) or when the plan at 30 % removes nothing (no group with exact, unfrozen units).
- sparsify: the fp32 clean-up, ``sparsify{density=0.3},annotate-sparsity``, compiled against the
  sparsified graph's eager output.

`run_entry` runs one entry in this process; `main` (``python -m tools.zoo``) runs each entry in a
child process of its own (a crash or a hang in one entry, e.g. a segfault in a native library, becomes
that entry's row, not the end of the run), then writes ``docs/coverage.md`` and ``docs/coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tools.zoo.entry import ZooEntry

STAGES = ("capture", "fp32", "int8", "prune", "sparsify")
TOL = 1e-4  # max |got - want| / max |want|
PRUNE_RATIO = 0.3
SPARSE_DENSITY = 0.3
CALIB_BATCHES = 4
NUM_THREADS = 1  # the zoo runs beside other work on a small host; speed is not what it measures
ENTRY_TIMEOUT_S = 1200


class WrongAnswer(Exception):
    """A stage ran to the end but a number is over its tolerance."""


class NotApplicable(Exception):
    """The stage does not apply to this entry (the message says why)."""


@dataclass
class StageResult:
    """What one stage of one entry gave: a status (see the module docstring), the cell text, details."""

    status: str
    text: str
    error_class: str | None = None
    node: str | None = None
    where: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Subject:
    """One entry, built and captured: what every stage after capture starts from."""

    entry: ZooEntry
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    reference: Any  # a tensor, or a tuple / list of tensors
    graph: Any = None  # fxpress.Graph once captured


@dataclass
class EntryResult:
    """A row of the table."""

    name: str
    family: str
    params: int
    note: str
    stages: dict[str, StageResult] = field(default_factory=dict)
    seconds: float = 0.0


# --- numbers ----------------------------------------------------------------------------------------------


def flat(out: Any) -> torch.Tensor:
    """Every float tensor in an output (tensor, tuple, list, numpy) flattened into one float64 vector."""
    import numpy as np

    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, torch.Tensor):
        return out.detach().reshape(-1).to(torch.float64)
    if isinstance(out, list | tuple):
        return torch.cat([flat(o) for o in out]) if out else torch.zeros(0, dtype=torch.float64)
    raise TypeError(f"unexpected output type {type(out).__name__}")


def rel_error(got: Any, want: Any) -> float:
    """max |got - want| / max |want| (shapes must agree)."""
    g, w = flat(got), flat(want)
    if g.shape != w.shape:
        raise WrongAnswer(f"WRONG shape: {tuple(g.shape)} elements, expected {tuple(w.shape)}")
    scale = float(w.abs().max()) if w.numel() else 1.0
    diff = float((g - w).abs().max()) if w.numel() else 0.0
    if math.isnan(diff):
        return math.inf
    return diff / (scale if scale > 0 else 1.0)


def cosine(a: Any, b: Any) -> float:
    x, y = flat(a), flat(b)
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def check(got: Any, want: Any, what: str, tol: float = TOL) -> float:
    """The relative error of `got` to `want`; `WrongAnswer` when over `tol`."""
    err = rel_error(got, want)
    if not err <= tol:
        raise WrongAnswer(f"WRONG {what}: max rel error {err:.3g} > {tol:g}")
    return err


def _eager(graph: Any, inputs: Sequence[torch.Tensor]) -> Any:
    with torch.no_grad():
        return graph(*inputs)


def _compile(graph: Any) -> Any:
    import fxpress

    return fxpress.compile(graph, target="x86", num_threads=NUM_THREADS, tuning=False)


# --- inputs -----------------------------------------------------------------------------------------------


def calibration_batches(inputs: Sequence[torch.Tensor], n: int = CALIB_BATCHES) -> list[tuple[torch.Tensor, ...]]:
    """`n` input tuples like `inputs`: the inputs themselves, then seeded variations of them.

    Float tensors get scaled and noised copies; integer tensors that look like masks (only 0 and 1) are
    kept; other integer tensors (token ids) are redrawn in ``[0, max]``.
    """
    g = torch.Generator().manual_seed(1234)
    batches = [tuple(inputs)]
    for i in range(1, n):
        batch = []
        for x in inputs:
            if x.is_floating_point():
                noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
                batch.append(x * (0.8 + 0.1 * i) + 0.3 * noise)
            elif bool(((x == 0) | (x == 1)).all()):
                batch.append(x.clone())
            else:
                batch.append(torch.randint(0, int(x.max()) + 1, x.shape, generator=g, dtype=x.dtype))
        batches.append(tuple(batch))
    return batches


# --- stages -----------------------------------------------------------------------------------------------


def build_subject(entry: ZooEntry) -> Subject:
    """Build the entry's model and inputs and its fp32 eager output (not part of any stage)."""
    model, inputs = entry.build()
    with torch.no_grad():
        reference = model(*inputs)
    flat(reference)  # one tensor or a tuple / list of them (compared flattened and concatenated)
    return Subject(entry, model, tuple(inputs), reference)


def stage_capture(s: Subject) -> str:
    import fxpress

    s.graph = fxpress.capture(s.model, s.inputs)
    return f"{s.graph.num_ops} ops"


def _clean(s: Subject) -> Any:
    import fxpress

    return fxpress.optimize(s.graph, "default")


def stage_fp32(s: Subject) -> str:
    graph = _clean(s)
    err = check(_compile(graph)(*s.inputs), s.reference, "compiled fp32 vs eager")
    return f"{err:.1e}"


def stage_int8(s: Subject) -> str:
    import fxpress
    from fxpress.passes import Calibrate, FoldQDQ, Observe

    data = calibration_batches(s.inputs)
    q = fxpress.optimize(_clean(s), [Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    folded = sum(r.stats.get("folded", 0) for r in q.trace if r.stats)
    if folded == 0:
        raise NotApplicable("n/a: fold-qdq folded nothing")
    want = _eager(q, s.inputs)
    got = _compile(q)(*s.inputs)
    exact = bool(torch.equal(flat(got), flat(want)))
    err = 0.0 if exact else check(got, want, "compiled int8 vs eager int8 graph")
    cos = cosine(got, s.reference)
    return f"cos {cos:.4f}, " + ("exact" if exact else f"{err:.1e}") + f", {folded} folded"


def _approximate_protection(graph: Any, groups: Iterable[Any]) -> list[str]:
    """For every approximate group with unfrozen units: an op node of it to protect (freezes the group)."""
    nodes = {n.name: n for n in graph.nodes()}
    protected: list[str] = []
    for g in groups:
        if g.exact or not g.prunable:
            continue
        for v in g.values:
            node = nodes.get(v.node)
            if v.output == 0 and node is not None and node.op == "call_function":
                protected.append(v.node)
                break
        else:
            raise NotApplicable(f"n/a: approximate group {g.name} has no op node to protect")
    return protected


def zeroed(graph: Any, groups: Iterable[Any], plan: Any) -> Any:
    """The pruning oracle: a copy of `graph` with every member slice of every removed unit set to 0."""
    oracle = graph.copy()
    with torch.no_grad():
        for g in groups:
            for unit in plan.removed.get(g.id, []):
                for m in g.members:
                    oracle.param(m.param).index_fill_(m.axis, torch.as_tensor(m.indices(int(unit))), 0.0)
    return oracle


def stage_prune(s: Subject) -> str:
    import fxpress
    from fxpress.passes import AnalysisManager
    from fxpress.passes.prune import ChannelGroupsAnalysis, PruneChannels, plan_pruning

    if not s.entry.prunable:
        raise NotApplicable("n/a: " + (s.entry.note or "nothing prunable"))
    folded = fxpress.optimize(s.graph, "fold-bn")
    groups = AnalysisManager(folded).get(ChannelGroupsAnalysis)
    protected = _approximate_protection(folded, groups)
    plan = plan_pruning(folded, groups, PRUNE_RATIO, protected=protected)
    if plan.empty:
        raise NotApplicable(f"n/a: no exact prunable group ({len(protected)} approximate protected)")
    pruned = fxpress.optimize(folded, [PruneChannels(ratio=PRUNE_RATIO, protected=tuple(protected))])
    want = _eager(pruned, s.inputs)
    err = check(want, _eager(zeroed(folded, groups, plan), s.inputs), "pruned vs zeroed-channel oracle")
    cerr = check(_compile(pruned)(*s.inputs), want, "compiled pruned vs eager pruned")
    n_groups = sum(1 for r in plan.removed.values() if len(r))
    before = sum(t.numel() for t in folded.params().values())
    after = sum(t.numel() for t in pruned.params().values())
    return f"{err:.1e}/{cerr:.1e}, {n_groups} groups, params -{1 - after / before:.0%}" + (
        f", {len(protected)} approx. protected" if protected else ""
    )


def stage_sparsify(s: Subject) -> str:
    import fxpress

    sparse = fxpress.optimize(_clean(s), f"sparsify{{density={SPARSE_DENSITY}}},annotate-sparsity")
    want = _eager(sparse, s.inputs)
    compiled = _compile(sparse)
    err = check(compiled(*s.inputs), want, "compiled sparse vs eager sparse")
    bsr = len(getattr(compiled, "manifest", {}).get("block_sparse", []) or [])
    return f"{err:.1e}" + (f", {bsr} block-sparse" if bsr else "")


STAGE_FUNCS: dict[str, Callable[[Subject], str]] = {
    "capture": stage_capture,
    "fp32": stage_fp32,
    "int8": stage_int8,
    "prune": stage_prune,
    "sparsify": stage_sparsify,
}


# --- running ----------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _where(e: BaseException) -> str:
    """The innermost frame of a traceback: ``path:line in function``."""
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{os.path.relpath(f.filename)}:{f.lineno} in {f.name}"


def classify(e: BaseException) -> StageResult:
    """A `StageResult` for an exception a stage raised (see the module docstring)."""
    from fxpress.errors import FxpressError

    if isinstance(e, NotApplicable):
        return StageResult("n/a", _first_line(e))
    if isinstance(e, WrongAnswer):
        return StageResult("wrong", _first_line(e), error_class="WrongAnswer")
    name = type(e).__name__
    if isinstance(e, FxpressError):
        node = e.node
        text = f"{name}: {_first_line(e)}" + (f" (node {node})" if node else "")
        return StageResult("error", text, error_class=name, node=node, where=_where(e))
    return StageResult("raw", f"RAW {name}: {_first_line(e)}", error_class=name, where=_where(e))


def run_stage(name: str, s: Subject) -> StageResult:
    """Run one stage, catching whatever it raises."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = StageResult("ok", STAGE_FUNCS[name](s))
    except Exception as e:
        result = classify(e)
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def run_entry(entry: ZooEntry, stages: Sequence[str] = STAGES) -> EntryResult:
    """Every stage of one entry in this process; a stage that needs the capture is skipped without it."""
    start = time.perf_counter()
    try:
        s = build_subject(entry)
    except Exception as e:
        bad = classify(e)
        bad.text = "build failed: " + bad.text
        row = EntryResult(entry.name, entry.family, 0, entry.note)
        row.stages = {name: bad for name in stages}
        return row
    row = EntryResult(entry.name, entry.family, sum(p.numel() for p in s.model.parameters()), entry.note)
    row.stages["capture"] = run_stage("capture", s)
    for name in stages:
        if name == "capture":
            continue
        if not row.stages["capture"].ok:
            row.stages[name] = StageResult("skip", "skipped: capture failed")
            continue
        row.stages[name] = run_stage(name, s)
    row.seconds = round(time.perf_counter() - start, 1)
    return row


def all_entries() -> list[ZooEntry]:
    """hf.ENTRIES, then classic.ENTRIES when that module imports."""
    from tools.zoo import hf

    entries = list(hf.ENTRIES)
    try:
        from tools.zoo import classic
    except ImportError as e:
        print(f"tools.zoo.classic not used: {e}", file=sys.stderr)
    else:
        entries += list(classic.ENTRIES)
    return entries


def _row_from_json(d: dict[str, Any]) -> EntryResult:
    row = EntryResult(d["name"], d["family"], d["params"], d["note"], seconds=d["seconds"])
    row.stages = {k: StageResult(**v) for k, v in d["stages"].items()}
    return row


def run_isolated(entry: ZooEntry, timeout: float = ENTRY_TIMEOUT_S) -> EntryResult:
    """`run_entry` in a child process: a crash or a hang becomes this entry's row."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "tools.zoo", "--worker", entry.name, "--worker-out", str(out)]
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, timeout=timeout, capture_output=True, text=True)
            failure = None if out.exists() else f"RAW crash: worker exited {proc.returncode}"
            tail = (proc.stderr or "").strip().splitlines()[-1:] if failure else []
        except subprocess.TimeoutExpired:
            failure, tail = f"RAW timeout: over {timeout:.0f} s", []
        if failure is None:
            return _row_from_json(json.loads(out.read_text()))
    text = failure + (f" ({tail[0][:200]})" if tail else "")
    row = EntryResult(entry.name, entry.family, 0, entry.note, seconds=round(time.perf_counter() - start, 1))
    row.stages = {name: StageResult("raw", text, error_class="crash") for name in STAGES}
    return row


# --- the table --------------------------------------------------------------------------------------------


def _cell(r: StageResult | None) -> str:
    if r is None:
        return ""
    text = r.text.replace("|", "\\|").replace("\n", " ")
    if len(text) > 160:
        text = text[:157] + "..."
    return ("ok " + text) if r.ok else text


def summary(rows: Sequence[EntryResult]) -> dict[str, Any]:
    """Per stage: ok / applicable / percentage; the acceptance verdicts; every RAW and WRONG cell."""
    out: dict[str, Any] = {"entries": len(rows), "stages": {}}
    for stage in STAGES:
        results = [r.stages.get(stage) for r in rows]
        applicable = [x for x in results if x is not None and x.status != "n/a"]
        ok = sum(1 for x in applicable if x.ok)
        pct = 100.0 * ok / len(applicable) if applicable else 0.0
        out["stages"][stage] = {"ok": ok, "applicable": len(applicable), "percent": round(pct, 1)}
    st = out["stages"]
    out["acceptance"] = {
        "entries >= 40": len(rows) >= 40,
        "fp32 >= 90 %": st["fp32"]["percent"] >= 90,
        "int8 >= 80 %": st["int8"]["percent"] >= 80,
        "prune >= 80 % of prunable": st["prune"]["percent"] >= 80,
        "no RAW cell": not any(x.status == "raw" for r in rows for x in r.stages.values()),
    }
    out["defects"] = [
        {"entry": r.name, "stage": k, "status": x.status, "text": x.text, "where": x.where}
        for r in rows
        for k, x in r.stages.items()
        if x.status in ("raw", "wrong")
    ]
    return out


def markdown(rows: Sequence[EntryResult], summ: dict[str, Any], command: str) -> str:
    st = summ["stages"]
    line = ", ".join(f"{k} {v['ok']}/{v['applicable']} ({v['percent']:.0f} %)" for k, v in st.items())
    lines = [
        "# Coverage zoo",
        "",
        f"Generated by `{command}` (tools/zoo/; the stages and tolerances are in tools/zoo/run.py's docstring).",
        "Every model is built from a configuration with random seeded weights; nothing is downloaded.",
        "",
        f"**Summary**: {summ['entries']} architectures; ok / applicable: {line}.",
        "",
        "Acceptance: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in summ["acceptance"].items()) + ".",
        "",
        "Cells: `ok` and its numbers (fp32, sparsify: max relative error to eager; int8: cosine to fp32 eager,",
        "then `exact` or the relative error of compiled to the eager int8 graph, and the layers folded;",
        "prune: relative error to the zeroed-channel oracle / compiled to eager pruned, groups pruned, parameters",
        "removed, approximate groups protected), `n/a` and why, or the error: `ErrorClass: first line (node X)`",
        "for fxpress's own errors, `RAW <type>` for any other exception, `WRONG` for a number over tolerance.",
        "",
        "| architecture | family | params | " + " | ".join(STAGES) + " | s |",
        "|---|---|---|" + "---|" * len(STAGES) + "---|",
    ]
    for r in rows:
        cells = " | ".join(_cell(r.stages.get(k)) for k in STAGES)
        lines.append(f"| {r.name} | {r.family} | {r.params:,} | {cells} | {r.seconds:.0f} |")
    defects = summ["defects"]
    lines += ["", f"## Defects (RAW / WRONG): {len(defects)}", ""]
    lines += [
        f"- {d['entry']} / {d['stage']}: {d['text']}" + (f" ({d['where']})" if d["where"] else "") for d in defects
    ]
    if not defects:
        lines.append("none")
    notes = [r for r in rows if r.note]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {r.name}: {r.note}" for r in notes]
    return "\n".join(lines) + "\n"


def write(rows: Sequence[EntryResult], out: Path, command: str) -> dict[str, Any]:
    summ = summary(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "command": command,
        "torch": torch.__version__,
        "summary": summ,
        "entries": [asdict(r) for r in rows],
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, summ, command))
    return summ


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.zoo", description="Run the coverage zoo, write the table.")
    p.add_argument("--only", help="comma-separated entry names")
    p.add_argument("--fast", action="store_true", help="only the entries marked fast")
    p.add_argument("--out", default="docs/coverage", help="output path without suffix (.md and .json)")
    p.add_argument("--in-process", action="store_true", help="run entries in this process (no isolation)")
    p.add_argument(
        "--update",
        action="store_true",
        help="keep the other entries' rows from the existing OUT.json (re-run only --only / --fast ones)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    entries = all_entries()
    by_name = {e.name: e for e in entries}
    if args.worker:
        row = run_entry(by_name[args.worker])
        Path(args.worker_out).write_text(json.dumps(asdict(row)))
        return 0
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            p.error(f"unknown entries {unknown}; known: {', '.join(by_name)}")
        entries = [by_name[n] for n in names]
    if args.fast:
        entries = [e for e in entries if e.fast]
    rows = []
    for e in entries:
        row = run_entry(e) if args.in_process else run_isolated(e)
        cells = "  ".join(f"{k}={v.status}" for k, v in row.stages.items())
        print(f"{e.name:24s} {row.seconds:6.1f}s  {cells}", flush=True)
        rows.append(row)
    command = "python -m tools.zoo" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--worker")
    )
    previous = Path(args.out).with_suffix(".json")
    if args.update and previous.exists():
        data = json.loads(previous.read_text())
        fresh = {r.name: r for r in rows}
        old = {d["name"]: _row_from_json(d) for d in data["entries"]}
        rows = [fresh.get(n) or old[n] for n in by_name if n in fresh or n in old]
        command = f"{data['command']}, then {command}"
    summ = write(rows, Path(args.out), command)
    print(json.dumps(summ["stages"]), flush=True)
    return 0
