"""`CompiledModule`: run a compiled model with the TVM runtime, no torch needed.

Holds a Relax VM executable, its parameters (already transformed at compile
time) and the signature from the manifest. Calls check the inputs against the
signature (count, dtype, shape; ``None`` dims are dynamic) and raise
`InputError` naming the input and what was expected, before any native code
runs. Inputs may be numpy arrays, or torch tensors where torch is already
imported by the caller; outputs come back in the same kind.

This module never imports torch: an artifact runs where only numpy, the TVM
runtime and safetensors are installed.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

# TVM sizes its thread pool by its own count of cores (1 on this 2-vCPU VM,
# whose two vCPUs are separate cores to the guest) unless TVM_NUM_THREADS says otherwise, and
# `set_num_threads` can only go below that maximum: allow every CPU this
# process may run on. Read when TVM's pool is first created.
os.environ.setdefault(
    "TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)
# An idle TVM worker polls (sched_yield) this many times before it sleeps.
# TVM's default, 300000, keeps it busy for tens of milliseconds after every
# parallel kernel, taking the core from whatever runs next in the process: with
# ONNX Runtime's pool beside it, both ran 2x slower on 2 threads. 10000 polls
# (about a millisecond) still bridge the gaps between one model's kernels.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")

import tvm
from tvm import relax

from fxpress.errors import BackendError, InputError


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


_threads_in_effect: int | None = None


def set_num_threads(n: int) -> None:
    """Fix the TVM runtime's thread pool size (affects every module in the process).

    Reconfiguring the pool costs far more than a small kernel, so it is only
    done when the number changes. TVM pins the *calling* thread to one core
    when it configures the pool; every thread started afterwards (torch's and
    ONNX Runtime's pools included) would inherit that, so the caller's CPU
    affinity is restored right after.
    """
    global _threads_in_effect
    if n == _threads_in_effect:
        return
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        tvm.get_global_func("runtime.config_threadpool")(1, int(n))
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
    _threads_in_effect = int(n)


class CompiledModule:
    """A callable compiled model (see the module docstring)."""

    def __init__(
        self,
        executable: tvm.runtime.Executable | tvm.runtime.Module,
        params: Sequence[tvm.runtime.Tensor],
        manifest: dict[str, Any],
        *,
        device: str = "cpu",
        runnable: bool = True,
        library_path: str | None = None,
    ) -> None:
        self.executable = executable
        self.library_path = library_path  # the artifact's model.so when loaded from one
        self.params = list(params)
        # the untransformed parameters, kept only for modules whose weights are stored that way (hashed ones)
        self.raw_params: list[np.ndarray] | None = None
        self.manifest = manifest
        self.runnable = runnable
        self._device = tvm.cpu() if device == "cpu" else tvm.cuda()
        self._vm: relax.VirtualMachine | None = None
        self.num_threads = int(manifest.get("num_threads") or 0)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.manifest["inputs"])

    @property
    def target(self) -> str:
        return str(self.manifest["target"]["name"])

    def _machine(self) -> relax.VirtualMachine:
        if not self.runnable:
            raise BackendError(
                f"this module was built for target {self.target!r}, which does not run on this machine: "
                "save it and run it on the device it was built for"
            )
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self._device)
        return self._vm

    def _check(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        spec = self.inputs
        if len(inputs) != len(spec):
            names = ", ".join(s["name"] for s in spec)
            raise InputError(f"expected {len(spec)} input(s) ({names}), got {len(inputs)}")
        arrays = []
        for x, s in zip(inputs, spec, strict=True):
            arr = x.detach().cpu().numpy() if _is_torch_tensor(x) else x
            if not isinstance(arr, np.ndarray):
                raise InputError(f"input {s['name']!r} must be a numpy array or torch tensor, got {type(x).__name__}")
            if str(arr.dtype) != s["dtype"]:
                raise InputError(f"input {s['name']!r} must have dtype {s['dtype']}, got {arr.dtype}")
            shape = list(arr.shape)
            want = s["shape"]
            if len(shape) != len(want) or any(w is not None and w != d for w, d in zip(want, shape, strict=False)):
                shown = ["?" if w is None else w for w in want]
                raise InputError(f"input {s['name']!r} must have shape {shown}, got {shape}")
            arrays.append(np.require(arr, requirements="C"))
        return arrays

    def run_numpy(self, *inputs: Any) -> list[np.ndarray]:
        """Run and return every output as a numpy array, in order."""
        arrays = self._check(inputs)
        vm = self._machine()
        if self.num_threads:
            set_num_threads(self.num_threads)
        args = [self._to_device(a) for a in arrays]
        try:
            out = vm["main"](*args, *self.params)
        except Exception as exc:  # the inputs were checked above: this is the module's fault, say so plainly
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BackendError(
                f"the compiled module failed at run time: {type(exc).__name__}: {first}; "
                "this is a bug in fxpress's build: fxpress.compile(graph, target='eager') runs the graph meanwhile"
            ) from exc
        items = list(out) if not isinstance(out, tvm.runtime.Tensor) else [out]
        if self._device.dlpack_device_type() == 1:  # CPU: copy out through DLPack (fast)
            return [np.from_dlpack(o).copy() for o in items]
        return [o.numpy() for o in items]

    def _to_device(self, a: np.ndarray) -> tvm.runtime.Tensor:
        # zero-copy for 64-byte aligned host arrays (TVM kernels may assume that alignment);
        # DLPack cannot export a read-only array, so those are copied
        if self._device.dlpack_device_type() == 1 and a.ctypes.data % 64 == 0 and a.flags.writeable:
            return tvm.runtime.from_dlpack(a)
        return tvm.runtime.tensor(a, self._device)

    def __call__(self, *inputs: Any) -> Any:
        """Run; outputs match the inputs' kind (torch in, torch out) and nesting."""
        outs: list[Any] = self.run_numpy(*inputs)
        if inputs and _is_torch_tensor(inputs[0]):
            torch = sys.modules["torch"]
            outs = [torch.from_numpy(o) for o in outs]
        if "output_tree" in self.manifest:
            return _rebuild(self.manifest["output_tree"], iter(outs))
        return outs[0] if self.manifest.get("single_output") else tuple(outs)

    def save(self, directory: str) -> str:
        """Write this module as an artifact directory (atomically)."""
        from fxpress.runtime.save import save_module

        return str(save_module(self, directory))

    def __repr__(self) -> str:
        sig = ", ".join(f"{s['name']}: {s['dtype']}{s['shape']}" for s in self.inputs)
        return f"<fxpress.CompiledModule target={self.target} ({sig})>"


def _rebuild(tree: dict[str, Any], leaves: Any) -> Any:
    """The model's own output nesting (compile.py's `output_tree`) filled with the flat outputs, in order."""
    kind = tree["kind"]
    if kind == "leaf":
        return next(leaves)
    children = [_rebuild(c, leaves) for c in tree["children"]]
    if kind == "dict":
        return dict(zip(tree["keys"], children, strict=True))
    if kind == "namedtuple":
        return collections.namedtuple(tree["name"], tree["fields"])(*children)
    return children if kind == "list" else tuple(children)
