"""The coverage zoo (tools/zoo) through the runner's own stage functions, one test per architecture.

Each architecture goes through capture, fp32, int8, prune-channels and sparsify in this process
(`tools.zoo.run.run_entry`); every stage must end ``ok`` or ``n/a``, or in one of the clear fxpress errors
listed in `KNOWN` for it (asserted by class and message). A raw exception or a wrong number never
passes. The entries marked ``fast`` (about six, across families) run by default; the rest are marked
``slow`` and ``zoo`` and, at about a minute each on two cores, run only when asked for: ``pytest -m zoo``
or ``FXPRESS_ZOO=1`` (``python -m tools.zoo`` regenerates the committed table, docs/coverage.md).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from tools.zoo.entry import ZooEntry
from tools.zoo.run import STAGES, all_entries, run_entry

# (entry, stage) -> the clear fxpress error expected there today, "ErrorClass: message regex": the gaps the
# coverage table shows. None at the table's last run; when a stage turns ok the test still passes.
KNOWN: dict[tuple[str, str], str] = {}

# entry -> a defect of fxpress the table shows (a raw exception or a wrong number): expected to fail until
# fixed (not strict: the test passes once fxpress is fixed; then remove the line).
DEFECTS: dict[str, str] = {}


def _params(entries: list[ZooEntry]) -> list[Any]:
    out: list[Any] = []
    for e in entries:
        marks = [pytest.mark.zoo, pytest.mark.tvm]
        if not e.fast:
            marks.append(pytest.mark.slow)
        if e.name in DEFECTS:
            marks.append(pytest.mark.xfail(reason=DEFECTS[e.name], strict=False))
        out.append(pytest.param(e, id=e.name, marks=marks))
    return out


ENTRIES = all_entries()


def test_zoo_size() -> None:
    """At least 40 architectures, unique names, and a fast subset of about six across families."""
    names = [e.name for e in ENTRIES]
    assert len(names) == len(set(names))
    assert len(names) >= 40
    fast = [e for e in ENTRIES if e.fast]
    assert 4 <= len(fast) <= 10 and len({e.family for e in fast}) >= 3


@pytest.mark.parametrize("entry", _params(ENTRIES))
def test_entry(entry: ZooEntry, request: pytest.FixtureRequest) -> None:
    expr = str(request.config.getoption("markexpr", ""))
    asked = ("zoo" in expr and "not zoo" not in expr) or os.environ.get("FXPRESS_ZOO") == "1"
    if not entry.fast and not asked:
        pytest.skip("slow zoo entry: run with -m zoo or FXPRESS_ZOO=1")
    row = run_entry(entry)
    problems = []
    for stage in STAGES:
        r = row.stages[stage]
        known = KNOWN.get((entry.name, stage))
        if r.status in ("ok", "n/a"):
            continue
        if r.status == "error" and known is not None:
            cls, _, pattern = known.partition(": ")
            if r.error_class == cls and re.search(pattern, r.text):
                continue
        problems.append(f"{stage}: {r.status}: {r.text} ({r.where})")
    assert not problems, "\n".join(problems)
