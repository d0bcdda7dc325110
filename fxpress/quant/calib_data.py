"""Calibration data from the command line: a directory of .npy / .npz batches, or a Python factory.

    load_calibration("calib/", graph)            # a directory (or one .npy / .npz file)
    load_calibration("data.py:batches", graph)   # MODULE:FUNCTION, MODULE dotted or a .py path

Both give a list of input tuples, one per batch, ready for
``Calibrate(data=...)``. Files are read in sorted name order (zero-pad the
numbers: ``b02`` sorts before ``b10``):

- ``.npz``: one file per batch; its keys are the graph's input names
  (``input_ids``, ``attention_mask``), or ``arg0..argN``, or numpy's own
  ``arr_0..arr_N`` (``np.savez(f, x, mask)``); a single-input graph takes any
  one key.
- ``.npy``: one input per file; the files, in sorted order, are taken as many
  at a time as the graph has inputs (a single-input graph: one file per batch).

A factory is called without arguments and returns an iterable (a list, a
generator) of batches; each batch is a tuple of tensors or numpy arrays (a bare
tensor is a batch of one input). The iterable is read once and kept.

Every batch is checked against the graph with `check_batch`, the check the
``calibrate`` pass applies to every batch too (input count, dtype, static
sizes; no conversion, so save float32 arrays for a float32 model); a bad file, a missing path, an empty directory, keys that match no
input, a factory that cannot be imported or gives nothing: each an `InputError`
that names the file or the factory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxpress.errors import InputError
from fxpress.ir.graph import Graph
from fxpress.loading import import_module_or_file

_FORMS = "a directory of .npy / .npz batches, one .npy / .npz file, or MODULE:FUNCTION returning input tuples"


def load_calibration(spec: str, graph: Graph) -> list[tuple[torch.Tensor, ...]]:
    """The calibration batches `spec` names, checked against `graph`'s inputs (see the module docstring)."""
    path = Path(spec)
    if path.exists():
        return _load_files(path, graph)
    if ":" in spec:
        return _load_factory(spec, graph)
    raise InputError(f"calibration data {spec!r}: no such file or directory; give {_FORMS}")


def _shape(t: Any) -> str:
    """``[2, 3, 8, 8]``; a dynamic size prints as ``*``."""
    return "[" + ", ".join(str(d) if isinstance(d, int) else "*" for d in t.shape) + "]"


def check_batch(graph: Graph, item: Any, index: int) -> tuple[torch.Tensor, ...]:
    """`item` as a tuple of tensors, one per input of `graph` with its dtype and static sizes; else `InputError`.

    The check every calibration batch passes, whether ``calibrate`` reads it
    or `load_calibration` does; messages name the batch as ``data[index]``.
    """
    names = graph.input_names
    if not isinstance(item, tuple | list) or not all(isinstance(t, torch.Tensor) for t in item):
        got = f"a {type(item).__name__}" if not isinstance(item, tuple | list) else "a tuple holding non-tensors"
        raise InputError(
            f"data[{index}] is {got}, not a tuple of tensors; each item must be a tuple with one "
            f"tensor per graph input ({', '.join(names)}), e.g. data=[(x,) for x in batches]"
        )
    if len(item) != len(names):
        raise InputError(
            f"data[{index}] has {len(item)} tensors but the graph takes {len(names)} inputs "
            f"({', '.join(names)}); give the model inputs only (no labels)"
        )
    for name, node, t in zip(names, graph.inputs, item, strict=True):
        want = node.meta["val"]
        sizes_ok = t.dim() == want.dim() and all(
            not isinstance(w, int) or w == g for w, g in zip(want.shape, t.shape, strict=True)
        )
        if not sizes_ok or t.dtype != want.dtype:
            raise InputError(
                f"data[{index}], input {name!r}: got {t.dtype} {_shape(t)}, "
                f"but the graph takes {want.dtype} {_shape(want)}"
            )
    return tuple(item)


def _check(graph: Graph, item: tuple[torch.Tensor, ...], index: int, where: str) -> tuple[torch.Tensor, ...]:
    try:
        return check_batch(graph, item, index)
    except InputError as exc:
        raise InputError(f"calibration data {where}: {exc}") from None


def _read(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"calibration file {path}: cannot read it as numpy data: {exc}") from None


def _load_files(path: Path, graph: Graph) -> list[tuple[torch.Tensor, ...]]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
    if not files:
        raise InputError(f"calibration data {path}: the directory holds no .npy or .npz files; give {_FORMS}")
    kinds = {p.suffix for p in files}
    if not kinds <= {".npy", ".npz"}:
        raise InputError(f"calibration file {path}: not a .npy or .npz file")
    if len(kinds) > 1:
        raise InputError(f"calibration data {path}: mixes .npy and .npz files; use one kind (.npz: one file per batch)")
    if ".npz" in kinds:
        return [_check(graph, _npz_batch(p, graph), i, f"file {p}") for i, p in enumerate(files)]
    k = len(graph.inputs)
    if len(files) % k:
        raise InputError(
            f"calibration data {path}: {len(files)} .npy files do not make whole batches of {k} inputs "
            f"({', '.join(graph.input_names)}); with several inputs, save one .npz per batch keyed by input name"
        )
    batches = []
    for i in range(0, len(files), k):
        group = files[i : i + k]
        where = f"file {group[0]}" if k == 1 else "files " + ", ".join(str(p) for p in group)
        batches.append(_check(graph, tuple(torch.from_numpy(_read(p)) for p in group), i // k, where))
    return batches


def _npz_batch(path: Path, graph: Graph) -> tuple[torch.Tensor, ...]:
    names = graph.input_names
    with _read(path) as npz:
        keys = list(npz.files)
        for order in (names, [f"arg{i}" for i in range(len(names))], [f"arr_{i}" for i in range(len(names))]):
            if sorted(keys) == sorted(order):
                return tuple(torch.from_numpy(npz[key]) for key in order)
        if len(names) == 1 and len(keys) == 1:
            return (torch.from_numpy(npz[keys[0]]),)
    raise InputError(
        f"calibration file {path}: keys {keys} match neither the graph's inputs {names} "
        f"nor arg0..arg{len(names) - 1}; save it with np.savez(file, {', '.join(f'{n}=...' for n in names)})"
    )


def _import_callable(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    try:
        module = import_module_or_file(module_name)
    except FileNotFoundError:
        raise InputError(f"calibration factory {spec!r}: file {module_name} does not exist; give {_FORMS}") from None
    except ImportError as exc:
        raise InputError(
            f"calibration data {spec!r}: not a path, and module {module_name!r} cannot be imported ({exc}); "
            f"give {_FORMS}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"calibration factory {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def _as_batch(item: Any) -> Any:
    """A tuple of tensors from what a factory yields (numpy arrays converted; a bare tensor is one input)."""
    if isinstance(item, torch.Tensor | np.ndarray):
        item = (item,)
    if isinstance(item, tuple | list):
        return tuple(torch.from_numpy(t) if isinstance(t, np.ndarray) else t for t in item)
    return item  # calibrate's check names what it is


def _load_factory(spec: str, graph: Graph) -> list[tuple[torch.Tensor, ...]]:
    data = _import_callable(spec)()
    if not isinstance(data, Iterable) or isinstance(data, str | bytes | torch.Tensor):
        raise InputError(
            f"calibration factory {spec!r} returned a {type(data).__name__}, not an iterable of input tuples"
        )
    batches = [_check(graph, _as_batch(item), i, f"from {spec} (batch {i})") for i, item in enumerate(data)]
    if not batches:
        raise InputError(f"calibration factory {spec!r} gave no batches; it must return at least one input tuple")
    return batches
