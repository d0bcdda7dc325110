"""Load an artifact directory and return a runnable `CompiledModule`.

Verifies the manifest and every file hash first (`read_manifest`), then loads
the library with ``tvm.runtime.load_module`` and the weights from safetensors,
decoded to dense arrays (storage.py: packed, codebook and hashed weights). An
artifact whose weights were stored before the compile-time transform
(``weights_stage: raw``, hashed weights) runs the library's
``main_transform_params`` on them once here.
Imports neither torch nor the fxpress compiler.
"""

from __future__ import annotations

import os

import numpy as np
import tvm
from safetensors.numpy import load_file
from tvm import relax

from fxpress.errors import ArtifactError
from fxpress.runtime.amx import request_amx_permission
from fxpress.runtime.artifact import LIBRARY, WEIGHTS, read_manifest
from fxpress.runtime.cpu import host_cpu_flags
from fxpress.runtime.module import CompiledModule
from fxpress.runtime.storage import decode_params


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
        weights = decode_params(load_file(os.path.join(root, WEIGHTS)), manifest)
    except Exception as exc:
        raise ArtifactError(f"artifact {root} could not be loaded: {exc}") from exc
    raw = manifest.get("weights_stage") == "raw"
    wanted = manifest["raw_params"] if raw else manifest["params"]
    missing = [k for k in wanted if k not in weights]
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
    raw_params = [weights[k] for k in wanted] if raw else None
    if raw_params is not None:
        params = transform_params(lib, raw_params, device)
        if len(params) != len(manifest["params"]):
            raise ArtifactError(
                f"artifact {root}: the weight transform gave {len(params)} parameters, not "
                f"the {len(manifest['params'])} its manifest names; recompile it"
            )
    else:
        params = [tvm.runtime.tensor(weights[k], device) for k in manifest["params"]]
    if num_threads is not None:
        manifest = {**manifest, "num_threads": num_threads}
    module = CompiledModule(lib, params, manifest, device=target.get("device", "cpu"), library_path=library)
    module.raw_params = raw_params
    return module


def transform_params(
    executable: tvm.runtime.Module | tvm.runtime.Executable, raw: list[np.ndarray], device: tvm.runtime.Device
) -> list[tvm.runtime.Tensor]:
    """The compiled module's parameters made from the untransformed `raw` ones by its ``main_transform_params``."""
    vm = relax.VirtualMachine(executable, device)
    out = vm["main_transform_params"]([tvm.runtime.tensor(np.require(a, requirements="C"), device) for a in raw])
    return [tvm.runtime.tensor(np.require(t.numpy(), requirements="C"), device) for t in out]
