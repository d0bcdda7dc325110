"""Tuning: MetaSchedule searches a model's kernels; compile replays the winners.

``tune(graph, "x86", budget_s=60)`` imports the graph exactly as compile does
(`compile.import_graph`), runs the lowering stages up to ``schedule`` and
extracts one MetaSchedule task per fused PrimFunc that ``main`` calls and that
does real arithmetic: a float reduction (matmul, conv, pooling, norms). Left
out: ``main_transform_params`` (weight-only work that runs once at compile
time), integer kernels (fxpress's int8 rules use instructions, vpmaddwd and
VNNI, that MetaSchedule's CPU search space does not reach), functions already
scheduled (the hand-written BSR kernel) and element-wise functions (the
injective rule is as good as a search). Bigger tasks go first.

Budget: each task gets a share of the time left in proportion to its work
(FLOPs x calls), searched in rounds of `BATCH` candidates until its share or
`trials` runs out. Time a task leaves unused rolls over; a task whose share
is under a second is skipped. A round is never cut short, so a tune may
overrun by one round. The budget counts search time; import, extraction,
starting the worker processes and the final side-by-side timing come on
top. Candidates are built and run in worker processes with generous timeouts
(the default 30 s killed every candidate on this loaded 2-core VM); the
build workers live for the whole tune (`_PooledBuilder`). The search is
MetaSchedule's evolutionary search with a smaller population and xgboost's
cost model when xgboost is installed, else a random model.

Keep only what helps: after its search, a task's best candidate and fxpress's
rule schedule are built and timed side by side in this process; the record
enters the cache only when it is faster (`only_faster`), so replaying a cache
never swaps a rule kernel for one that measured slower at tune time.

Cache: ``<cache>/<key>/`` holds MetaSchedule's JSON database
(``database_workload.json``: workloads keyed by MetaSchedule's structural hash
of the PrimFunc; ``database_tuning_record.json``: traces and run times) and
``target.json``. ``<cache>`` is `cache_dir`, else ``$FXPRESS_TUNING_CACHE``,
else ``~/.cache/fxpress/tuning``; ``<key>`` is the preset name plus a hash of
the target with its thread count left out (a schedule is valid for any number
of threads), e.g. ``x86-3f2a9c1d7e02``: another CPU or preset gets another
directory.

Replay (`open_records` + `apply_records`, a lowering stage before ``schedule``):
the records whose own target has this key go into an in-memory database and
TVM's ``MetaScheduleApplyDatabase`` replaces each PrimFunc that has one; the
others get the dlight rules as before. A database file that is not valid JSON
is an error naming the file and line (ignoring it would silently compile
slower code): delete it, or compile with ``tuning=False`` / ``--no-tuning``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm.s_tir.analysis
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.dlight.analysis import normalize_prim_func

from fxpress.backends.tvm.targets import TargetSpec, default_threads, resolve_target
from fxpress.errors import BackendError, TargetError

log = logging.getLogger(__name__)

CACHE_ENV = "FXPRESS_TUNING_CACHE"
DEFAULT_CACHE = "~/.cache/fxpress/tuning"
_FILES = ("database_workload.json", "database_tuning_record.json")
_MAX_TRIALS = 100_000  # "no trial limit": the time share ends the search first
BATCH = 16  # candidates per round: the budget is checked between rounds


# ---------------------------------------------------------------- the cache


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else ``$FXPRESS_TUNING_CACHE``, else ``~/.cache/fxpress/tuning``."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _without_threads(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_threads(v) for k, v in sorted(obj.items()) if k != "num-cores"}
    return [_without_threads(v) for v in obj] if isinstance(obj, list) else obj


def target_key(target: tvm.target.Target, preset: str) -> str:
    """``<preset>-<12 hex>``: the directory of `target`'s records (thread count left out)."""
    text = json.dumps(_without_threads(json.loads(str(target))), sort_keys=True)
    return f"{preset}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _check_json_lines(directory: Path) -> None:
    """MetaSchedule aborts on a bad line without naming the file: check each line first."""
    for name in _FILES:
        path = directory / name
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as exc:
                raise BackendError(
                    f"tuning database file {path} is corrupt (line {lineno}: {exc.msg}); delete it "
                    f"(or the directory {directory}) and tune again, or compile with tuning=False (--no-tuning)"
                ) from None


def _json_database(directory: Path, *, create: bool) -> ms.database.JSONDatabase:
    _check_json_lines(directory)
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=create, module_equality="structural")
    except Exception as exc:  # valid JSON, wrong structure
        raise BackendError(
            f"tuning database in {directory} cannot be read ({str(exc).splitlines()[-1] if str(exc) else exc!r}); "
            "delete the directory and tune again, or compile with tuning=False (--no-tuning)"
        ) from exc


@dataclass(frozen=True)
class Records:
    """The tuning records usable for one target, in memory."""

    directory: Path
    key: str
    database: ms.Database
    count: int
    tensorized: bool  # some trace tensorizes: TVM's intrinsics must be registered to replay it


def open_records(spec: TargetSpec, tuning: bool | str | os.PathLike[str] | None = "auto") -> Records | None:
    """The records for `spec` that `tuning` points at, or None.

    ``"auto"``/None: the default cache (absent is fine); a path: that cache
    directory (must exist); False: none. Only records whose own target has
    `spec`'s key are kept, so a record for another target is never used.
    """
    if tuning is False:
        return None
    if tuning is True or tuning is None or tuning == "auto":
        root = cache_root()
    elif isinstance(tuning, str | os.PathLike):
        root = Path(tuning).expanduser()
        if not root.is_dir():
            raise BackendError(f"tuning cache directory {root} does not exist; run `fxpress tune` with --cache-dir")
    else:
        raise BackendError(f"tuning must be 'auto', False or a cache directory, got {tuning!r}")
    key = target_key(spec.target, spec.name)
    directory = root / key
    if not (directory / _FILES[0]).is_file():
        return None
    stored = _json_database(directory, create=False)
    usable = ms.database.MemoryDatabase(module_equality="structural")
    count, tensorized = 0, False
    for record in stored.get_all_tuning_records():
        if record.target is None or target_key(record.target, spec.name) != key:
            continue
        workload = usable.commit_workload(record.workload.mod)
        usable.commit_tuning_record(
            ms.database.TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)
        )
        count += 1
        tensorized |= any(inst.kind.name == "Tensorize" for inst in record.trace.insts)
    return Records(directory, key, usable, count, tensorized) if count else None


def apply_records(records: Records, applied: list[str]) -> tvm.transform.Pass:
    """The lowering stage: PrimFuncs with a record get its schedule; their names go into `applied`."""

    @tvm.transform.module_pass(opt_level=0, name="fxpress_apply_records")
    def _apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if records.tensorized:
            _import_tensor_intrinsics()
        before = _scheduled(mod)
        with records.database:
            mod = tvm.relax.transform.MetaScheduleApplyDatabase()(mod)
        applied.extend(sorted(_scheduled(mod) - before))
        return mod

    return _apply


def _scheduled(mod: tvm.IRModule) -> set[str]:
    return {
        gv.name_hint
        for gv, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and f.attrs.get("tirx.is_scheduled", False)
    }


# ------------------------------------------------- TVMScript import speed


def _fast_intrinsics_import() -> Callable[[], None]:
    """A self-contained function registering TVM's tensor intrinsics quickly.

    MetaSchedule imports ``tvm.s_tir.tensor_intrin`` (hundreds of TVMScript
    functions) in the tuning process and in every builder worker. TVMScript
    calls ``inspect.stack()`` per function, which looks every frame's source
    up through ``sys.modules`` (about 2000 modules once torch is loaded): the
    import took 174 s here. During it, a stack that reads lines from
    ``linecache`` only takes 4.5 s. The function is local so that the worker
    receives it by value (cloudpickle) without importing fxpress.
    """

    def run() -> None:
        import inspect
        import linecache
        import sys

        if "tvm.s_tir.tensor_intrin" in sys.modules:
            return

        def stack(context: int = 1) -> list[inspect.FrameInfo]:
            frames, frame = [], sys._getframe(1)
            while frame is not None:
                name, line = frame.f_code.co_filename, frame.f_lineno
                text = linecache.getline(name, line)
                code = [text] if text else None
                frames.append(inspect.FrameInfo(frame, name, line, frame.f_code.co_name, code, 0 if text else None))
                frame = frame.f_back
            return frames

        saved, inspect.stack = inspect.stack, stack
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401
        finally:
            inspect.stack = saved

    return run


def _import_tensor_intrinsics() -> None:
    _fast_intrinsics_import()()


# ---------------------------------------------------------------- the search


@dataclass(frozen=True)
class TaskResult:
    """One task: what the search did and the side-by-side times (microseconds)."""

    name: str
    weight: int  # how many calls of this function the model makes
    flops: float
    trials: int
    valid: int  # candidates that built and ran
    search_s: float
    tuned_us: float | None
    rule_us: float | None
    kept: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class TuneReport:
    """What `tune` did: per task, the trials and the tuned vs fxpress-rule latency."""

    target: str
    key: str
    directory: Path
    budget_s: float
    tasks: list[TaskResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # function -> why not tuned
    wall_s: float = 0.0

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def kept(self) -> int:
        return sum(t.kept for t in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "key": self.key,
            "directory": str(self.directory),
            "budget_s": self.budget_s,
            "wall_s": round(self.wall_s, 2),
            "trials": self.trials,
            "kept": self.kept,
            "tasks": [t.to_json() for t in self.tasks],
            "skipped": self.skipped,
        }

    def __str__(self) -> str:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        rows = [("task", "calls", "trials", "valid", "tuned us", "rule us", "cached")]
        rows += [
            (
                t.name,
                str(t.weight),
                str(t.trials),
                str(t.valid),
                us(t.tuned_us),
                us(t.rule_us),
                "yes" if t.kept else "no",
            )
            for t in self.tasks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"tuned for {self.target} in {self.wall_s:.0f} s: {self.trials} trials, {self.kept} records kept"]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append(f"records: {self.directory}")
        lines += [f"not tuned: {name} ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _tuning_worthy(func: tvm.tirx.PrimFunc) -> str | None:
    """None if `func` is worth a search, else why not."""
    if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
        return "hand-scheduled kernel"
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return "irregular loop nest"
    reductions = [b for b in infos if not b.is_injective()]
    if not reductions:
        return "element-wise"
    if not any(str(sch.get(b.block_rv).writes[0].source.dtype).startswith("float") for b in reductions):
        return "integer kernel (fxpress's int8 rules)"
    return None


def _fused_module(mod: tvm.IRModule, spec: TargetSpec) -> tvm.IRModule:
    """`mod` after the lowering stages before ``schedule``: the functions compile schedules."""
    from fxpress.backends.tvm.lower import lowering_stages

    with spec.target:
        for name, stage in lowering_stages(spec):
            if name == "schedule":
                break
            mod = stage(mod)
    return mod


def _extract(fused: tvm.IRModule, spec: TargetSpec, skipped: dict[str, str]) -> list[ms.ExtractedTask]:
    """The tasks of the functions ``main`` calls that are worth tuning, biggest first."""
    main_only = tvm.IRModule({gv: f for gv, f in fused.functions.items() if gv.name_hint != "main_transform_params"})
    main_only = tvm.relax.transform.DeadCodeElimination(["main"])(main_only)
    tasks = []
    for task in ms.relax_integration.extract_tasks(main_only, spec.target):
        why = _tuning_worthy(task.dispatched[0]["main"])
        if why is None:
            tasks.append(task)
        else:
            skipped[task.task_name] = why
    return sorted(tasks, key=lambda t: -_work(t))


def _work(task: ms.ExtractedTask) -> float:
    """Floating-point operations of all the model's calls of the task's function."""
    return float(s_tir.analysis.estimate_tir_flops(task.dispatched[0])) * int(task.weight)


def tuning_tasks(graph: Any, spec: TargetSpec) -> tuple[list[ms.ExtractedTask], dict[str, str]]:
    """The tasks `tune` would search for `graph` on `spec`, biggest first, and the functions left out (why)."""
    from fxpress.backends.tvm.compile import import_graph

    mod, _, _ = import_graph(graph, spec)
    skipped: dict[str, str] = {}
    return _extract(_fused_module(mod, spec), spec, skipped), skipped


def _random_args(func: tvm.tirx.PrimFunc, rng: np.random.Generator) -> list[tvm.runtime.Tensor]:
    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        data = rng.standard_normal(shape) if dtype.startswith("float") else rng.integers(-8, 8, shape)
        args.append(tvm.runtime.tensor(np.ascontiguousarray(data.astype(dtype))))
    return args


def _time_us(func: tvm.tirx.PrimFunc, spec: TargetSpec, args: list[tvm.runtime.Tensor], symbol: str) -> float:
    """Median microseconds of `func` built alone under a unique symbol (same-named kernels clash)."""
    mod = tvm.IRModule({symbol: func.with_attr("global_symbol", symbol)})
    with spec.target:
        lib = tvm.compile(mod, target=spec.target)
    lib = getattr(lib, "mod", lib)
    timer = lib.time_evaluator(symbol, tvm.cpu(), number=1, repeat=7, min_repeat_ms=40)
    return float(np.median(timer(*args).results)) * 1e6


def _rule_func(func: tvm.tirx.PrimFunc, spec: TargetSpec) -> tvm.tirx.PrimFunc:
    import tvm.s_tir.dlight as dl

    from fxpress.backends.tvm.lower import schedule_rules

    with spec.target:
        return dl.ApplyDefaultSchedule(*schedule_rules(spec))(tvm.IRModule({"main": func}))["main"]


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Counts the trials measured and those that built and ran."""

    def __init__(self) -> None:
        self.trials = 0
        self.valid = 0

    def apply(self, _scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any) -> None:
        self.trials += len(candidates)
        self.valid += sum(1 for b, r in zip(builds, runs, strict=True) if b.error_msg is None and r.error_msg is None)
        log.debug("task %d: %d trials, %d valid", task_id, self.trials, self.valid)


def _search(task: ms.ExtractedTask, spec: TargetSpec, share_s: float, trials: int, pools: tuple[Any, Any]) -> Any:
    """Run MetaSchedule on one task in rounds of `BATCH` until its time or trials run out.

    Rounds share the database (each round's evolutionary search starts from
    the best measured so far) and the cost model. Stopping between rounds,
    not from a callback: terminating a task from a measure callback trips
    MetaSchedule's round-robin scheduler (``Check failed: !is_terminated``).
    Returns (in-memory database, progress counts).
    """
    quiet = logging.getLogger("fxpress.tune.metaschedule")
    quiet.setLevel(logging.WARNING)
    database = ms.database.MemoryDatabase(module_equality="structural")
    progress = _Progress()
    cost = "xgb" if importlib.util.find_spec("xgboost") else "random"
    cost_model = ms.cost_model.CostModel.create(cost, **({"seed": 0} if cost == "random" else {}))
    deadline = time.monotonic() + share_s
    with tempfile.TemporaryDirectory(prefix="fxpress-tune-") as work_dir:
        for round_ in itertools.count():
            left = trials - progress.trials
            if left <= 0 or time.monotonic() >= deadline:
                break
            context = ms.TuneContext(
                mod=task.dispatched[0],
                target=spec.target,
                space_generator="post-order-apply",
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=2),
                task_name=task.task_name,
                logger=quiet,
                rand_state=round_,
                num_threads=default_threads(),
            ).clone()
            before, start = progress.trials, time.monotonic()
            ms.tune_tasks(
                tasks=[context],
                task_weights=[1.0],
                work_dir=work_dir,
                max_trials_global=min(left, BATCH),
                max_trials_per_task=min(left, BATCH),
                num_trials_per_iter=min(left, BATCH),
                builder=pools[0],
                runner=pools[1],
                database=database,
                cost_model=cost_model,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress],
                task_scheduler="round-robin",
            )
            log.debug(
                "%s round %d: %d trials in %.1f s",
                task.task_name,
                round_,
                progress.trials - before,
                time.monotonic() - start,
            )
            if progress.trials == before:  # the search space is exhausted
                break
    return database, progress


def _worker_build() -> Callable[[tuple[Any, Any]], str]:
    """A function building one candidate with MetaSchedule's default build and export.

    Local, like `_fast_intrinsics_import`'s, so the worker gets it by value.
    """

    def run(item: tuple[Any, Any]) -> str:
        import tvm
        import tvm.s_tir.meta_schedule  # registers the default build and export

        mod, target = item
        built = tvm.get_global_func("s_tir.meta_schedule.builder.default_build")(mod, target, None)
        return str(tvm.get_global_func("s_tir.meta_schedule.builder.default_export")(built))

    return run


@derived_object
class _PooledBuilder(ms.builder.PyBuilder):
    """MetaSchedule's LocalBuilder with one worker pool for the whole tune.

    LocalBuilder starts fresh worker processes for every batch; each imports
    TVM and torch first (10-20 s on this loaded VM). Here the workers live
    until `close`; a worker that crashes or times out is replaced by the pool.
    """

    def __init__(self, workers: int, timeout_s: float) -> None:
        from tvm.support.popen_pool import PopenPoolExecutor

        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, initializer=_fast_intrinsics_import())
        self.timeout_s = timeout_s
        self.run = _worker_build()
        self.pool.submit(int).result()  # start a worker (10-20 s here) before the budget's clock runs

    def build(self, inputs: list[Any]) -> list[Any]:
        from tvm.support.popen_pool import StatusKind

        results, start = [], time.monotonic()
        for done in self.pool.map_with_error_catching(self.run, [(i.mod, i.target) for i in inputs]):
            if done.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"build timed out after {self.timeout_s} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"build failed: {done.value}"))
        log.debug("built %d candidates in %.1f s", len(inputs), time.monotonic() - start)
        return results

    def close(self) -> None:
        self.pool.shutdown()


def _pools() -> tuple[Any, Any]:
    # generous timeouts: the default 30 s killed every candidate on this loaded 2-core VM
    builder = _PooledBuilder(max(1, default_threads() - 1), timeout_s=300)
    runner = ms.runner.LocalRunner(
        timeout_sec=120, evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)
    )
    return builder, runner


def _say(enabled: bool, msg: str) -> None:
    if enabled:
        print(f"[fxpress] {msg}", file=sys.stderr, flush=True)


def tune(
    graph: Any,
    target: str = "x86",
    *,
    budget_s: float,
    trials: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    only_faster: bool = True,
) -> TuneReport:
    """Search schedules for `graph`'s kernels on this machine and cache the winners (see the module doc)."""
    from fxpress.ir.graph import Graph
    from fxpress.runtime.module import set_num_threads

    if not isinstance(graph, Graph):
        raise BackendError(f"tune() takes an fxpress Graph (from fxpress.capture), got {type(graph).__name__}")
    if isinstance(budget_s, bool) or not isinstance(budget_s, int | float) or not 0 < budget_s < float("inf"):
        raise BackendError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise BackendError(f"trials must be a positive int (trials per task) or None, got {trials!r}")
    spec = resolve_target(target)
    if not spec.host_runnable or spec.device != "cpu":
        raise TargetError(f"tuning measures kernels on this machine; target {target!r} builds for another one")
    start = time.monotonic()
    directory = cache_root(cache_dir) / target_key(spec.target, spec.name)
    stored = _json_database(directory, create=True)
    (directory / "target.json").write_text(json.dumps({"preset": spec.name, "target": str(spec.target)}) + "\n")
    tasks, skipped = tuning_tasks(graph, spec)
    report = TuneReport(spec.name, directory.name, directory, float(budget_s), skipped=skipped)
    _say(progress, f"tune: {len(tasks)} task(s) for {spec.name}, budget {budget_s:g} s, records in {directory}")
    if tasks:
        _import_tensor_intrinsics()
        set_num_threads(int(spec.target.attrs.get("num-cores", default_threads())))
        pools = _pools()
        deadline = time.monotonic() + budget_s
        rng = np.random.default_rng(0)
        work = [max(_work(t), 1.0) for t in tasks]
        try:
            for i, task in enumerate(tasks):
                share = (deadline - time.monotonic()) * work[i] / sum(work[i:])
                if share < 1.0:
                    report.skipped[task.task_name] = "budget spent"
                    continue
                result = _tune_one(task, spec, share, trials or _MAX_TRIALS, pools, stored, only_faster, rng, i)
                report.tasks.append(result)
                _say(progress, f"tune {i + 1}/{len(tasks)} {_line(result)}")
        finally:
            pools[0].close()
            pools[1].pool.shutdown()
    report.wall_s = time.monotonic() - start
    return report


def _tune_one(
    task: ms.ExtractedTask,
    spec: TargetSpec,
    share: float,
    trials: int,
    pools: tuple[Any, Any],
    stored: ms.Database,
    only_faster: bool,
    rng: np.random.Generator,
    index: int,
) -> TaskResult:
    """Search one task, time its best against the rule, commit the record if it wins."""
    task_mod, name = task.dispatched[0], task.task_name
    flops = float(s_tir.analysis.estimate_tir_flops(task_mod))
    begin = time.monotonic()
    try:
        database, progress = _search(task, spec, share, trials, pools)
    except Exception as exc:  # a task MetaSchedule cannot handle must not end the tune
        note = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return TaskResult(name, int(task.weight), flops, 0, 0, time.monotonic() - begin, None, None, False, note)
    search_s = time.monotonic() - begin
    best = database.query_tuning_record(task_mod, spec.target, "main")
    if best is None:
        note = "no candidate built and ran"
        return TaskResult(name, int(task.weight), flops, progress.trials, 0, search_s, None, None, False, note)
    args = _random_args(task_mod["main"], rng)
    tuned_func = database.query_schedule(task_mod, spec.target, "main").mod["main"]
    tuned_us = _time_us(tuned_func, spec, args, f"fxpress_tuned_{index}")
    rule_us = _time_us(_rule_func(task_mod["main"], spec), spec, args, f"fxpress_rule_{index}")
    kept = not only_faster or tuned_us < rule_us
    if kept:
        workload = stored.commit_workload(task_mod)
        stored.commit_tuning_record(
            ms.database.TuningRecord(best.trace, workload, best.run_secs, spec.target, best.args_info)
        )
    valid = progress.valid
    return TaskResult(name, int(task.weight), flops, progress.trials, valid, search_s, tuned_us, rule_us, kept)


def _line(r: TaskResult) -> str:
    if r.tuned_us is None:
        return f"{r.name}: {r.trials} trials in {r.search_s:.0f} s, nothing usable ({r.note})"
    verdict = "record cached" if r.kept else "rule kept"
    return (
        f"{r.name}: {r.trials} trials ({r.valid} valid) in {r.search_s:.0f} s, "
        f"best {r.tuned_us:.1f} us vs rule {r.rule_us:.1f} us -> {verdict}"
    )
