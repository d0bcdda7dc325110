"""Save a `CompiledModule` as an artifact directory (see artifact.py); sub-8-bit weights packed (packing.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.numpy import save_file

from fxpress.errors import ArtifactError
from fxpress.runtime.artifact import LIBRARY, WEIGHTS, write_artifact
from fxpress.runtime.packing import pack_params

if TYPE_CHECKING:  # module.py imports this module when a module is saved
    from fxpress.runtime.module import CompiledModule


def save_module(module: CompiledModule, directory: str | Path) -> Path:
    """Write `module` to `directory` atomically; returns the directory's path."""
    manifest = dict(module.manifest)
    names = list(manifest["params"])
    if len(names) != len(module.params):
        raise ArtifactError(f"module has {len(module.params)} parameters but its manifest names {len(names)}")
    arrays, packed = pack_params({k: p.numpy() for k, p in zip(names, module.params, strict=True)})
    manifest.pop("packed", None)
    if packed:  # sub-8-bit weights: stored in the bits they need, widened again on load
        manifest["packed"] = packed
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
