"""Load an artifact directory and return a runnable `CompiledModule`.

Verifies the manifest and every file hash first (`read_manifest`), then loads
the library with ``tvm.runtime.load_module`` and the weights from safetensors
(packed sub-8-bit weights widened back to int8).
Imports neither torch nor the fxpress compiler.
"""

from __future__ import annotations

import os

import tvm
from safetensors.numpy import load_file

from fxpress.errors import ArtifactError
from fxpress.runtime.amx import request_amx_permission
from fxpress.runtime.artifact import LIBRARY, WEIGHTS, read_manifest
from fxpress.runtime.cpu import host_cpu_flags
from fxpress.runtime.module import CompiledModule
from fxpress.runtime.packing import unpack_params


def load(directory: str | os.PathLike[str], *, num_threads: int | None = None) -> CompiledModule:
    """Load the artifact in `directory` (checked by hash) for running here."""
    manifest = read_manifest(directory)
    root = os.fspath(directory)
    target = manifest["target"]
    if not target.get("host_runnable", False):
        raise ArtifactError(
            f"artifact {root} was built for target {target.get('name')!r}; it does not run on this machine"
        )
    library = os.path.abspath(os.path.join(root, LIBRARY))
    try:
        lib = tvm.runtime.load_module(library)
        weights = unpack_params(load_file(os.path.join(root, WEIGHTS)), manifest.get("packed", {}))
    except Exception as exc:
        raise ArtifactError(f"artifact {root} could not be loaded: {exc}") from exc
    missing = [k for k in manifest["params"] if k not in weights]
    if missing:
        raise ArtifactError(f"artifact {root}: {WEIGHTS} lacks parameters {missing[:5]}; recompile it")
    lacking = [f for f in target.get("requires", []) if f not in host_cpu_flags()]
    if lacking:
        raise ArtifactError(
            f"artifact {root} was built for target {target.get('name')!r} and needs CPU features {lacking} "
            "that this machine lacks; recompile it with target 'x86' on this machine"
        )
    if target.get("isa") == "x86-amx":
        request_amx_permission()  # before the first tile instruction; a refusal is an error that says why
    device = tvm.cpu() if target.get("device", "cpu") == "cpu" else tvm.cuda()
    params = [tvm.runtime.tensor(weights[k], device) for k in manifest["params"]]
    if num_threads is not None:
        manifest = {**manifest, "num_threads": num_threads}
    return CompiledModule(lib, params, manifest, device=target.get("device", "cpu"), library_path=library)
