"""What this machine's CPU can execute (read from /proc/cpuinfo)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (empty where /proc is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split())
