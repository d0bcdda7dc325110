"""The artifact on disk: a directory written atomically and verified on load.

Layout (format version 3)::

    DIR/
      manifest.json       what it is: format, inputs, outputs, target, versions,
                          the pipeline and its trace, the parameter order, and
                          the sha256 of every other file
      model.so            the compiled TVM library (Relax VM executable)
      weights.safetensors the (compile-time transformed) parameters, no pickle,
                          each in its smallest lossless form (storage.py):
                          int8 ones whose values fit 4 or 2 bits packed
                          (the ``packed`` table), few distinct values as
                          indices + codebook (``codebook``), HashedNets
                          weights as buckets (``hashed``, stored before the
                          transform: ``weights_stage: raw``); the manifest's
                          ``storage`` entry gives bytes dense and as stored

`write_artifact` builds the directory under a temporary name beside the
destination and renames it into place, so a crash or an error never leaves a
half-written artifact, and an existing artifact at the destination is only
replaced once the new one is complete. `read_manifest` checks the format and
every file's hash before anything is loaded. This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fxpress.errors import ArtifactError

FORMAT = "fxpress-artifact"
FORMAT_VERSION = 3
# 2 = 1 plus an optional ``packed`` table of sub-8-bit weights (packing.py);
# 3 = 2 plus ``codebook`` and ``hashed`` tables, ``weights_stage`` and ``storage`` (storage.py)
READS = (1, 2, 3)
MANIFEST = "manifest.json"
LIBRARY = "model.so"
WEIGHTS = "weights.safetensors"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_artifact(
    directory: str | os.PathLike[str], manifest: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Write an artifact atomically: `write_files(tmp)` fills a temp dir, then rename.

    `manifest` gets the format fields and the file hashes added; the caller
    provides everything else.
    """
    dest = Path(directory).resolve()
    if dest.exists() and not dest.is_dir():
        raise ArtifactError(f"cannot write artifact to {dest}: a file of that name exists")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise ArtifactError(
            f"cannot write artifact to {dest}: the directory is not empty and holds no fxpress artifact "
            f"(no {MANIFEST}), so it is not replaced; choose another directory"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        write_files(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **manifest,
            "files": {n: sha256(tmp / n) for n in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        _fsync_dir(tmp)
        _publish_permissions(tmp)
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _replace(tmp: Path, dest: Path) -> None:
    """Rename `tmp` to `dest`; an artifact already at `dest` is put back if that fails."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _publish_permissions(path: Path) -> None:
    """Give the artifact ordinary permissions (mkdtemp makes 0700; safetensors 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    for p in path.iterdir():
        p.chmod((0o777 if os.access(p, os.X_OK) else 0o666) & ~umask)


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a manifest: format, version, and every file's sha256."""
    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(f"no artifact at {root}: not a directory (write one with `fxpress compile ... -o DIR`)")
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} is not an fxpress artifact: {MANIFEST} is missing (recompile it)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is corrupt, recompile it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an fxpress manifest (no format {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in READS:
        raise ArtifactError(
            f"{root} has artifact format version {version}; this fxpress reads versions {list(READS)}: "
            "recompile it with this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or LIBRARY not in files or WEIGHTS not in files:
        raise ArtifactError(f"{path} does not list {LIBRARY} and {WEIGHTS} with their hashes; the artifact is corrupt")
    for name, expected in files.items():
        f = root / name
        if Path(name).name != name or not f.is_file():
            raise ArtifactError(f"artifact {root} is incomplete: {name} is missing")
        actual = sha256(f)
        if actual != expected:
            raise ArtifactError(
                f"artifact {root}: {name} has sha256 {actual[:16]}..., the manifest says {expected[:16]}...: "
                "the file was changed or corrupted after it was written; recompile the artifact"
            )
    return manifest
