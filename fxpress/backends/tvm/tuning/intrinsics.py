"""A fast import of TVM's tensor intrinsics, for replaying and searching tensorized schedules.

MetaSchedule imports ``tvm.s_tir.tensor_intrin`` (hundreds of TVMScript
functions) in the tuning process and in every builder worker, and a replayed
record whose trace tensorizes needs the intrinsics registered too. TVMScript
calls ``inspect.stack()`` per function, which looks every frame's source up
through ``sys.modules`` (about 2000 modules once torch is loaded): the import
took 174 s on the shared 2-core VM. During it, a stack that reads lines from
``linecache`` only takes 4.5 s. ``inspect.stack`` is patched for the length
of that one import and restored after it, even when it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType


def fast_intrinsics_import() -> Callable[[], None]:
    """A self-contained function registering TVM's tensor intrinsics quickly (see the module doc).

    The function is local so that a worker process receives it by value
    (cloudpickle, as a pool initializer) without importing fxpress.
    """

    def run() -> None:
        import inspect
        import linecache
        import sys

        if "tvm.s_tir.tensor_intrin" in sys.modules:
            return

        def stack(context: int = 1) -> list[inspect.FrameInfo]:
            frames: list[inspect.FrameInfo] = []
            frame: FrameType | None = sys._getframe(1)
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


def import_tensor_intrinsics() -> None:
    """Register TVM's tensor intrinsics in this process (once; later calls return at once)."""
    fast_intrinsics_import()()
