"""Import what a user names on the command line: ``pkg.module`` or ``path/to/file.py``.

The CLI's ``MODULE:FACTORY`` models and ``--calibration module:function`` data
both go through `import_module_or_file`; each caller turns its two failures
(`FileNotFoundError`, `ImportError`) into its own error with its own advice.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType


def import_module_or_file(name: str) -> ModuleType:
    """The module `name`: imported, or, when it ends in ``.py``, that file executed as a module."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
