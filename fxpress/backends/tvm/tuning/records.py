"""Tuning records: the cache `fxpress tune` writes, and their replay by compile.

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

This is the only tuning module compile imports; the search (`search.tune`)
writes through `json_database` and `target_key` here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from fxpress.backends.tvm.targets import TargetSpec
from fxpress.backends.tvm.tuning.intrinsics import import_tensor_intrinsics
from fxpress.errors import BackendError

CACHE_ENV = "FXPRESS_TUNING_CACHE"
DEFAULT_CACHE = "~/.cache/fxpress/tuning"
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


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
    for name in DATABASE_FILES:
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


def json_database(directory: Path, *, create: bool) -> ms.database.JSONDatabase:
    """MetaSchedule's JSON database in `directory` (made when `create`), a bad file being a `BackendError`."""
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
    if not (directory / DATABASE_FILES[0]).is_file():
        return None
    stored = json_database(directory, create=False)
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
            import_tensor_intrinsics()
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
