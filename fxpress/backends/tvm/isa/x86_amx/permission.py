"""AMX tile-data permission for the ISA layer: the runtime's request, re-exported.

The request itself lives in `fxpress.runtime.amx` so that a loaded artifact
(torch-free, compiler-free) can make it before running AMX code; the AMX
ISA's ``prepare_runtime`` and the benchmarks call it from here or there.
"""

from fxpress.runtime.amx import AMXPermissionError, amx_permission_granted, request_amx_permission

__all__ = ["AMXPermissionError", "amx_permission_granted", "request_amx_permission"]
