"""Make TVMScript's ``@T.prim_func`` cheap to apply: it no longer reads the source of every caller frame.

``T.prim_func`` captures ``inspect.stack()`` each time it decorates a function. ``inspect.stack`` reads
the source line of every frame on the stack, and for each frame ``inspect.getmodule`` scans all of
``sys.modules`` (even with no source context: frozen importlib frames name no file); fxpress's kernels define about 30 prim_funcs at import, so importing the backend took
10-40 s, and longest in processes that had already imported transformers (2,800 modules to scan).

Of that stack TVM's decorator needs the frames themselves (closure variables of string annotations) and
the source line of one frame, ``frames[2]``, which tells a function inside an ``@I.ir_module`` class from
a free one (`tvm.script.parser.core.utils.is_defined_in_class`). `install` gives the decorator's module
an ``inspect`` whose ``stack`` builds exactly that: every frame without source context, and ``frames[2]``
with its line. Only ``tvm.tirx.script.parser.entry`` sees it; ``inspect`` itself is unchanged for
everything else in the process.
"""

from __future__ import annotations

import dis
import inspect
import sys
import types
from typing import Any


def _stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack(context)``, with source context read for ``frames[2]`` only."""
    frames = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:  # not getouterframes(.., 0): it still looks up each frame's module (the slow part)
        code, line = frame.f_code, frame.f_lineno
        where = dis.Positions(line, line, None, None)
        frames.append(inspect.FrameInfo(frame, code.co_filename, line, code.co_name, None, None, positions=where))
        frame = frame.f_back
    if context > 0 and len(frames) > 2:
        info = inspect.getframeinfo(frames[2].frame, context)
        frames[2] = inspect.FrameInfo(frames[2].frame, *info, positions=info.positions)
    return frames


class _Inspect(types.ModuleType):
    """`inspect`, except `stack` (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


def install() -> None:
    """Give TVM's ``prim_func`` decorator the cheap `_stack` (idempotent)."""
    from tvm.tirx.script.parser import entry

    if isinstance(entry.inspect, _Inspect):
        return
    proxy = _Inspect("inspect")
    proxy.stack = _stack  # type: ignore[attr-defined]
    entry.inspect = proxy
