"""Ask Linux for permission to use the AMX tile registers, once per process.

Linux (5.16+) does not give a process the large AMX tile-data state (8 KiB
per thread, XSTATE component 18, XTILEDATA) by default: until the process
asks with ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, the first
tile instruction (``ldtilecfg``, ``tileloadd``, ``tdpbusd``...) kills it with
SIGILL. The permission is per process and covers threads started before and
after, so one successful request is enough; `request_amx_permission` caches
it and is cheap to call before every run of AMX code.

glibc has no ``arch_prctl`` wrapper for these codes, so the request goes
through ``syscall(158, ...)`` (158 is ``SYS_arch_prctl`` on x86-64) via
ctypes. A refusal raises `AMXPermissionError` naming the errno and its usual
cause. This module lives in the runtime, which imports neither torch nor the
compiler, because a loaded artifact with AMX kernels must make the same
request before its first call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import threading

from fxpress.errors import TargetError

SYS_ARCH_PRCTL = 158  # x86-64 syscall number
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

_CAUSES = {
    errno.EINVAL: "the kernel does not know XTILEDATA (Linux < 5.16) or the CPU has no AMX",
    errno.EPERM: "the process may not enable extended state (seccomp or a container policy)",
    errno.ENOSYS: "the kernel does not implement arch_prctl",
    errno.ENOSPC: "a thread's signal stack (sigaltstack) is too small for the AMX state",
}

_lock = threading.Lock()
_granted = False


class AMXPermissionError(TargetError):
    """This process cannot run AMX instructions (not x86-64 Linux, or the kernel refused)."""


def _arch_prctl(code: int, arg: int) -> tuple[int, int]:
    """``syscall(SYS_arch_prctl, code, arg)``: (return value, errno)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(code), ctypes.c_ulong(arg))
    return int(ret), ctypes.get_errno()


def _check_host() -> None:
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        raise AMXPermissionError(
            f"AMX tile permission is requested from Linux on x86-64; this host is {sys.platform}/{machine}: "
            "build for it with a target without AMX"
        )


def request_amx_permission() -> None:
    """Make this process able to execute AMX tile instructions; idempotent and thread-safe.

    Raises `AMXPermissionError` if the host is not x86-64 Linux or the kernel refuses.
    """
    global _granted
    if _granted:
        return
    with _lock:
        if _granted:
            return
        _check_host()
        ret, err = _arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
        if ret != 0:
            cause = _CAUSES.get(err, "unexpected refusal")
            raise AMXPermissionError(
                f"arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) returned {ret}: "
                f"errno {err} ({errno.errorcode.get(err, '?')}: {os.strerror(err)}); {cause}. "
                "AMX kernels cannot run in this process; build for a target without AMX (e.g. x86-vnni)"
            )
        _granted = True


def amx_permission_granted() -> bool:
    """Whether `request_amx_permission` has succeeded in this process."""
    return _granted
