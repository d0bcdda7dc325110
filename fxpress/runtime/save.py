"""Save a `CompiledModule` as an artifact directory (see artifact.py), each weight in its smallest form (storage.py).

Weights are normally written as the compiled module reads them (transformed
at compile time). A module with HashedNets weights keeps its parameters as
they were before that transform (``weights_stage: raw``): a hashed weight is
stored as its bucket vector, and the loader rebuilds it and runs the
library's own ``main_transform_params`` once (load.py), because a panel-packed
or transposed weight no longer follows the hash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.numpy import save_file

from fxpress.errors import ArtifactError
from fxpress.runtime.artifact import LIBRARY, WEIGHTS, write_artifact
from fxpress.runtime.storage import TABLES, encode_params, storage_summary

if TYPE_CHECKING:  # module.py imports this module when a module is saved
    from fxpress.runtime.module import CompiledModule


def save_module(module: CompiledModule, directory: str | Path) -> Path:
    """Write `module` to `directory` atomically; returns the directory's path."""
    manifest = dict(module.manifest)
    names = list(manifest["params"])
    if len(names) != len(module.params):
        raise ArtifactError(f"module has {len(module.params)} parameters but its manifest names {len(names)}")
    if manifest.get("weights_stage") == "raw":
        raw_names = list(manifest["raw_params"])
        if module.raw_params is None or len(raw_names) != len(module.raw_params):
            raise ArtifactError("module keeps no untransformed parameters for its hashed weights; recompile it")
        dense = dict(zip(raw_names, module.raw_params, strict=True))
    else:
        dense = {k: p.numpy() for k, p in zip(names, module.params, strict=True)}
    try:
        arrays, tables = encode_params(dense, manifest.get("hashed_params"))
    except ValueError as exc:
        raise ArtifactError(f"the weights cannot be stored: {exc}; recompile the model") from exc
    for table in TABLES:
        manifest.pop(table, None)
    manifest.update(tables)  # how each weight is stored; decoded again on load
    manifest["storage"] = storage_summary(dense, arrays, tables)
    compiler = manifest["target"].get("cross_compiler")
    if compiler and shutil.which(compiler) is None:
        raise ArtifactError(
            f"saving a {module.target!r} build needs the cross compiler {compiler!r} on PATH "
            "(Debian: apt-get install gcc-aarch64-linux-gnu)"
        )

    def write(tmp: Path) -> None:
        if module.library_path is not None:  # loaded from an artifact: its library is final, copy it
            shutil.copyfile(module.library_path, tmp / LIBRARY)
        elif compiler:
            from tvm.support import cc

            module.executable.export_library(str(tmp / LIBRARY), fcompile=cc.cross_compiler(compiler))
        else:
            module.executable.export_library(str(tmp / LIBRARY))
        save_file(arrays, str(tmp / WEIGHTS))

    return write_artifact(directory, manifest, write)
