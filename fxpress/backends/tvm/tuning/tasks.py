"""Tuning tasks: which of a model's kernels a search could improve, biggest first.

`tuning_tasks(graph, spec)` imports the graph exactly as compile does
(`compile.import_graph`), runs the lowering stages up to ``schedule`` and
extracts one MetaSchedule task per fused PrimFunc that ``main`` calls and that
does real arithmetic: a float reduction (matmul, conv, pooling, norms). Left
out: ``main_transform_params`` (weight-only work that runs once at compile
time), integer kernels (fxpress's int8 rules use instructions, vpmaddwd and
VNNI, that MetaSchedule's CPU search space does not reach), functions already
scheduled (the hand-written BSR kernel) and element-wise functions (the
injective rule is as good as a search). Bigger tasks (`work`: FLOPs x calls)
go first, and the search shares its budget out by the same measure.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm.s_tir.analysis
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.dlight.analysis import normalize_prim_func

from fxpress.backends.tvm.compile import import_graph
from fxpress.backends.tvm.lower import lowering_stages
from fxpress.backends.tvm.targets import TargetSpec


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
    return sorted(tasks, key=lambda t: -work(t))


def work(task: ms.ExtractedTask) -> float:
    """Floating-point operations of all the model's calls of the task's function."""
    return float(s_tir.analysis.estimate_tir_flops(task.dispatched[0])) * int(task.weight)


def tuning_tasks(graph: Any, spec: TargetSpec) -> tuple[list[ms.ExtractedTask], dict[str, str]]:
    """The tasks `tune` would search for `graph` on `spec`, biggest first, and the functions left out (why)."""
    mod, _, _ = import_graph(graph, spec)
    skipped: dict[str, str] = {}
    return _extract(_fused_module(mod, spec), spec, skipped), skipped
