"""`fxpress.compile`: pick a backend by target name."""

from __future__ import annotations

import os
from typing import Any

from fxpress.errors import TargetError
from fxpress.ir.graph import Graph


def compile(
    graph: Graph,
    target: Any = "x86",
    *,
    num_threads: int | None = None,
    cross: bool = False,
    tuning: bool | str | os.PathLike[str] | None = "auto",
    progress: bool | None = None,
) -> Any:
    """Compile `graph` for `target` (``eager`` or a TVM preset such as ``x86``).

    `tuning` (TVM targets): ``"auto"`` replays `fxpress tune`'s records for the
    target from the default cache when there are any, a path names another
    cache directory, False uses fxpress's schedule rules only. `progress` (TVM
    targets): report each compile step and lowering stage on stderr; default
    ``FXPRESS_PROGRESS``, else whether stderr is a terminal (fxpress.progress).
    """
    if target == "eager":
        from fxpress.backends.eager import EagerModule

        return EagerModule(graph)
    from fxpress.backends.tvm.compile import compile_graph
    from fxpress.backends.tvm.targets import TARGETS, TargetSpec

    if isinstance(target, TargetSpec):  # resolved already (a preset with changed options: tests, tools)
        return compile_graph(graph, target, tuning=tuning, progress=progress)
    if not isinstance(target, str):
        raise TargetError(f"target must be a name such as 'x86', got {type(target).__name__}")
    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; valid targets: eager, {', '.join(TARGETS)}")
    return compile_graph(graph, target, num_threads=num_threads, cross=cross, tuning=tuning, progress=progress)
