"""Run compiled fxpress models with the TVM runtime alone (no torch import).

`load(dir)` opens an artifact written by `CompiledModule.save`, checking every
file's hash; the result is callable on numpy arrays.
"""

from fxpress.runtime.load import load
from fxpress.runtime.module import CompiledModule, set_num_threads

__all__ = ["CompiledModule", "load", "set_num_threads"]
