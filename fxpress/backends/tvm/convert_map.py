"""Converters from fxpress's own torch.library ops to Relax, for the importer.

`from_exported_program(..., custom_convert_map=CONVERT_MAP)` looks ops up by
``node.target.__name__`` (``"quantized_linear.default"``). Each converter is
``f(node, importer) -> relax.Expr`` and emits through
``importer.block_builder``. The quantization and sparsity passes register
their integer and sparse kernels here as they land.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONVERT_MAP: dict[str, Callable[[Any, Any], Any]] = {}
