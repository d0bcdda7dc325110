"""What this machine's CPU is and can execute (read from /proc/cpuinfo)."""

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


@functools.cache
def host_cpu_model() -> str:
    """The CPU's model name, which every reported number goes with ("unknown" where /proc is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
