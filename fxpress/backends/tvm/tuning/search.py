"""`tune`: MetaSchedule searches a model's kernels on this machine, within a time budget.

``tune(graph, "x86", budget_s=60)`` takes the tasks `tasks.tuning_tasks`
finds (biggest first) and searches each in turn.

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

After its search, a task's best candidate is timed against fxpress's rule
(`report.time_side_by_side`) and its record enters the cache (`records`)
only when it is faster (`only_faster`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops

from fxpress.backends.tvm.targets import TargetSpec, default_threads, resolve_target
from fxpress.backends.tvm.tuning.intrinsics import fast_intrinsics_import, import_tensor_intrinsics
from fxpress.backends.tvm.tuning.records import cache_root, json_database, target_key
from fxpress.backends.tvm.tuning.report import TaskResult, TuneReport, progress_line, time_side_by_side
from fxpress.backends.tvm.tuning.tasks import tuning_tasks, work
from fxpress.errors import BackendError, TargetError
from fxpress.progress import bar, enabled, say

log = logging.getLogger(__name__)

_MAX_TRIALS = 100_000  # "no trial limit": the time share ends the search first
BATCH = 16  # candidates per round: the budget is checked between rounds


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Counts the trials measured and those that built and ran, advancing `bar` (a tqdm bar) by the trials."""

    def __init__(self, bar: Any = None) -> None:
        self.trials = 0
        self.valid = 0
        self.bar = bar

    def apply(self, _scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any) -> None:
        self.trials += len(candidates)
        self.valid += sum(1 for b, r in zip(builds, runs, strict=True) if b.error_msg is None and r.error_msg is None)
        if self.bar is not None:
            self.bar.set_postfix(valid=self.valid, refresh=False)
            self.bar.update(len(candidates))
        log.debug("task %d: %d trials, %d valid", task_id, self.trials, self.valid)


def _search(
    task: ms.ExtractedTask,
    spec: TargetSpec,
    share_s: float,
    trials: int,
    pools: tuple[Any, Any],
    trials_bar: Any = None,
) -> Any:
    """Run MetaSchedule on one task in rounds of `BATCH` until its time or trials run out.

    Rounds share the database (each round's evolutionary search starts from
    the best measured so far) and the cost model. Stopping between rounds,
    not from a callback: terminating a task from a measure callback trips
    MetaSchedule's round-robin scheduler (``Check failed: !is_terminated``).
    `trials_bar`: a tqdm bar the measured trials advance (fxpress.progress.bar).
    Returns (in-memory database, progress counts).
    """
    quiet = logging.getLogger("fxpress.tune.metaschedule")
    quiet.setLevel(logging.WARNING)
    database = ms.database.MemoryDatabase(module_equality="structural")
    progress = _Progress(trials_bar)
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

    Local, like `intrinsics.fast_intrinsics_import`'s, so the worker gets it by value.
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

        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, initializer=fast_intrinsics_import())
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


def tune(
    graph: Any,
    target: str = "x86",
    *,
    budget_s: float,
    trials: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    only_faster: bool = True,
) -> TuneReport:
    """Search schedules for `graph`'s kernels on this machine and cache the winners (see the module doc).

    `progress`: a line per task and a bar over each task's trials on stderr; default
    ``FXPRESS_PROGRESS``, else whether stderr is a terminal (fxpress.progress).
    """
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
    stored = json_database(directory, create=True)
    (directory / "target.json").write_text(json.dumps({"preset": spec.name, "target": str(spec.target)}) + "\n")
    tasks, skipped = tuning_tasks(graph, spec)
    report = TuneReport(spec.name, directory.name, directory, float(budget_s), skipped=skipped)
    show = enabled(progress)
    say(f"tune: {len(tasks)} task(s) for {spec.name}, budget {budget_s:g} s, records in {directory}", show)
    if tasks:
        import_tensor_intrinsics()
        set_num_threads(int(spec.target.attrs.get("num-cores", default_threads())))
        pools = _pools()
        deadline = time.monotonic() + budget_s
        rng = np.random.default_rng(0)
        shares = [max(work(t), 1.0) for t in tasks]
        try:
            for i, task in enumerate(tasks):
                share = (deadline - time.monotonic()) * shares[i] / sum(shares[i:])
                if share < 1.0:
                    report.skipped[task.task_name] = "budget spent"
                    continue
                label = f"tune {i + 1}/{len(tasks)} {task.task_name}"
                with bar(None, total=trials or None, desc=label, unit="trial", progress=show) as trials_bar:
                    result = _tune_one(
                        task, spec, share, trials or _MAX_TRIALS, pools, stored, only_faster, rng, i, trials_bar
                    )
                report.tasks.append(result)
                say(f"tune {i + 1}/{len(tasks)} {progress_line(result)}", show)
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
    trials_bar: Any = None,
) -> TaskResult:
    """Search one task, time its best against the rule, commit the record if it wins."""
    task_mod, name = task.dispatched[0], task.task_name
    flops = float(estimate_tir_flops(task_mod))
    begin = time.monotonic()
    try:
        database, progress = _search(task, spec, share, trials, pools, trials_bar)
    except Exception as exc:  # a task MetaSchedule cannot handle must not end the tune
        note = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return TaskResult(name, int(task.weight), flops, 0, 0, time.monotonic() - begin, None, None, False, note)
    search_s = time.monotonic() - begin
    best = database.query_tuning_record(task_mod, spec.target, "main")
    if best is None:
        note = "no candidate built and ran"
        return TaskResult(name, int(task.weight), flops, progress.trials, 0, search_s, None, None, False, note)
    tuned_func = database.query_schedule(task_mod, spec.target, "main").mod["main"]
    tuned_us, rule_us = time_side_by_side(task_mod, tuned_func, spec, rng, index)
    kept = not only_faster or tuned_us < rule_us
    if kept:
        workload = stored.commit_workload(task_mod)
        stored.commit_tuning_record(
            ms.database.TuningRecord(best.trace, workload, best.run_secs, spec.target, best.args_info)
        )
    valid = progress.valid
    return TaskResult(name, int(task.weight), flops, progress.trials, valid, search_s, tuned_us, rule_us, kept)
