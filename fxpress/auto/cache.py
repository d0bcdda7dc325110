"""The search's on-disk cache: JSON files written atomically after every new entry.

    store = JsonStore(directory / "latency.json")
    store.get(key) / store.put(key, value)      # put rewrites the file (temp file + rename)

Two stores live in the cache directory (``FXPRESS_AUTO_CACHE``, default
``~/.cache/fxpress/auto``): ``latency.json`` (one-layer kernel times, keyed by
op kind, shapes, method, target, ISA, threads and fxpress version: shared by
every search on this machine) and ``candidates/<fingerprint>.json`` (evaluated
candidates of one model, calibration and evaluation). A search that is
interrupted finds everything it measured there and goes on from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fxpress.ir.graph import Graph


def default_cache_dir() -> Path:
    """``FXPRESS_AUTO_CACHE`` if set, else ``~/.cache/fxpress/auto``."""
    env = os.environ.get("FXPRESS_AUTO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fxpress" / "auto"


class JsonStore:
    """A dict persisted as one JSON file; every `put` is written at once (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError):
                self.data = {}  # a torn or foreign file: start over rather than fail the search

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _update(h: Any, t: torch.Tensor) -> None:
    h.update(str(t.dtype).encode() + str(list(t.shape)).encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def graph_fingerprint(graph: Graph) -> str:
    """A hash of the graph's ops (names and targets, not shapes) and parameter values.

    Shapes are left out on purpose: the same model captured at batch 1 or batch 8 has the same
    accuracy under a pipeline, so both searches share their evaluated candidates.
    """
    h = hashlib.sha256()
    for node in graph.nodes():
        h.update(f"{node.op} {node.name} {node.target}\n".encode())
    for name, value in sorted(graph.params().items()):
        h.update(name.encode())
        _update(h, value)
    return h.hexdigest()[:16]


def data_fingerprint(batches: Sequence[Sequence[torch.Tensor]]) -> str:
    """A hash of a list of input tuples (calibration or held-out data)."""
    h = hashlib.sha256()
    for batch in batches:
        for t in batch:
            _update(h, t)
    return h.hexdigest()[:16]
