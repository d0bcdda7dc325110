"""Progress on stderr for the steps that take seconds: compile, tune, calibration, export.

One switch decides whether anything is shown (`enabled`): an explicit
``progress=`` argument wins, then the environment variable ``FXPRESS_PROGRESS``
(``1``/``0``, also ``true``/``false``, ``on``/``off``, ``yes``/``no``), then the
caller's default, then whether stderr is a terminal (as tqdm decides). So a
terminal shows progress, logs and tests stay quiet unless asked.

Three forms, all writing to stderr only (stdout carries results, e.g. the
CLI's JSON):

- `say`: one line, ``[fxpress] <msg>``;
- `step`: a named step timed as a context manager: ``<name> ...`` when it
  starts, ``<name>: 1.23 s`` when it ends (on a terminal the second line
  overwrites the first);
- `bar`: a tqdm bar over an iterable (a running count when it has no length);
  on a terminal it is cleared when done, elsewhere its last state is kept.

A leaf module: it imports nothing of fxpress, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["ENV", "bar", "enabled", "say", "step"]

ENV = "FXPRESS_PROGRESS"
_ON = {"1", "true", "on", "yes"}
_OFF = {"0", "false", "off", "no"}

T = TypeVar("T")


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def enabled(progress: bool | None = None, *, default: bool | None = None) -> bool:
    """Whether to show progress: `progress` when given, else ``FXPRESS_PROGRESS``, else `default`, else a TTY stderr."""
    if progress is not None:
        return bool(progress)
    env = os.environ.get(ENV, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    return _tty() if default is None else default


def say(msg: str, progress: bool | None = None) -> None:
    """Print ``[fxpress] <msg>`` to stderr when progress is `enabled`."""
    if enabled(progress):
        print(f"[fxpress] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(name: str, progress: bool | None = None) -> Iterator[None]:
    """Time the enclosed block as step `name`, reporting its start and its seconds on stderr when `enabled`.

    A step that raises reports nothing more: the error says what happened.
    """
    if not enabled(progress):
        yield
        return
    tty = _tty()
    print(f"[fxpress] {name} ...", file=sys.stderr, end="" if tty else "\n", flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        if tty:
            print(file=sys.stderr, flush=True)  # end the open line
        raise
    seconds = time.perf_counter() - start
    print(f"{chr(13) if tty else ''}[fxpress] {name}: {seconds:.2f} s", file=sys.stderr, flush=True)


def bar(
    items: Iterable[T] | None, *, desc: str, unit: str, total: int | None = None, progress: bool | None = None
) -> Any:
    """`items` wrapped in a tqdm bar on stderr (`total` steps, or a count), disabled unless `enabled`.

    Use it as a context manager and iterate it (it yields `items` unchanged), or,
    with `items` None, advance it by hand with ``update(n)``.
    """
    from tqdm import tqdm

    return tqdm(
        items, total=total, desc=desc, unit=unit, leave=not _tty(), disable=not enabled(progress), file=sys.stderr
    )
