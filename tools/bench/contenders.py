"""How each contender is built for one (model, thread count) and called.

- ``eager``: the PyTorch module under ``torch.inference_mode``, fp32, with
  ``torch.set_num_threads(n)`` (set by the caller for the whole case);
- ``fxpress``: ``capture`` -> ``optimize("default")`` -> ``compile(target="x86",
  num_threads=n)``, called on numpy arrays (the public path, input checks and
  copies included); capture, optimize and compile seconds are recorded;
- ``ort``: ``torch.onnx.export`` (the dynamo exporter, falling back to the
  TorchScript one if it fails; which one was used is recorded), then an ONNX
  Runtime CPU session with ``intra_op_num_threads=n``, one inter-op thread,
  sequential execution, every graph optimisation on, and its workers told to
  stop spinning when a run ends (``session.force_spinning_stop``: they would
  otherwise spin on into the next contender's call).

Each builder returns a `Contender` whose ``info`` holds the build facts and
the largest output difference from eager (a cheap sanity check that the
contender computes the same thing). A builder that fails raises; the caller
records the error for that contender and goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CONTENDERS = ("eager", "fxpress", "ort", "fxpress-int8", "torch-int8", "ort-int8")
INT8 = ("fxpress-int8", "torch-int8", "ort-int8")  # only for cases with calibration data


@dataclass
class Contender:
    """A named zero-argument call to time, and what was learned building it."""

    name: str
    call: Callable[[], Any]
    info: dict[str, Any] = field(default_factory=dict)


def first_output(out: Any) -> np.ndarray:
    if isinstance(out, tuple | list):
        out = out[0]
    if isinstance(out, torch.Tensor):
        return out.detach().numpy()
    return np.asarray(out)


def max_diff(out: Any, ref: np.ndarray) -> float:
    return float(np.abs(first_output(out).astype(np.float64) - ref).max())


def cosine(out: Any, ref: np.ndarray) -> float:
    """Mean cosine similarity of the rows (the last axis) of the first output and the reference."""
    a = first_output(out).astype(np.float64).reshape(-1, ref.shape[-1])
    b = ref.reshape(-1, ref.shape[-1])
    return float(np.mean((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)))


def _checked(info: dict[str, Any], out: Any, ref: np.ndarray) -> dict[str, Any]:
    info["max_abs_diff_vs_eager"] = max_diff(out, ref)
    info["cosine_vs_eager"] = cosine(out, ref)
    return info


def build_eager(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, ref: np.ndarray) -> Contender:
    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(*inputs)

    return Contender("eager", call, {"torch_threads": torch.get_num_threads()})


def build_fxpress(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, ref: np.ndarray) -> Contender:
    import fxpress

    t0 = time.perf_counter()
    graph = fxpress.capture(model, inputs)
    t1 = time.perf_counter()
    graph = fxpress.optimize(graph, "default")
    t2 = time.perf_counter()
    compiled = fxpress.compile(graph, target="x86", num_threads=threads, tuning=False)
    t3 = time.perf_counter()
    arrays = tuple(x.numpy() for x in inputs)
    info = {
        "capture_s": round(t1 - t0, 3),
        "optimize_s": round(t2 - t1, 3),
        "compile_s": round(t3 - t2, 3),
        "lowering_s": compiled.manifest.get("lowering_s", {}),
        "target": str(compiled.manifest["target"]["target"]),
        "num_threads": compiled.num_threads,
    }

    def call() -> Any:
        return compiled(*arrays)

    return Contender("fxpress", call, _checked(info, call(), ref))


def build_fxpress_int8(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    ref: np.ndarray,
    calibration: list[tuple[torch.Tensor, ...]],
    dynamic: tuple[str, ...],
) -> Contender:
    """Static int8: ``fold-bn, observe{per-channel, weight-reduce-range, dynamic}, calibrate, fold-qdq``.

    Calibrated on the case's batches; 7-bit weights let every layer take the
    AVX2 u8s8 kernel (kernels/int8_avx2.py); the case's `dynamic` layers
    (MiniLM's FFN down-projections) quantize their input per row at run time.
    """
    import fxpress
    from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe

    t0 = time.perf_counter()
    graph = fxpress.capture(model, inputs)
    observe = Observe(per_channel=True, weight_reduce_range=True, dynamic=dynamic)
    passes = [FoldBatchNorm(), observe, Calibrate(data=calibration), FoldQDQ()]
    graph = fxpress.optimize(graph, passes)
    t1 = time.perf_counter()
    compiled = fxpress.compile(graph, target="x86", num_threads=threads, tuning=False)
    stats = graph.trace[-1].stats
    info = {
        "quantize_s": round(t1 - t0, 3),
        "compile_s": round(time.perf_counter() - t1, 3),
        "pipeline": graph.pipeline,
        "int8_ops": stats.get("folded"),
        "float_ops": len(stats.get("float", [])),
        "num_threads": compiled.num_threads,
    }
    arrays = tuple(x.numpy() for x in inputs)

    def call() -> Any:
        return compiled(*arrays)

    return Contender("fxpress-int8", call, _checked(info, call(), ref))


def build_torch_int8(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, ref: np.ndarray) -> Contender:
    """PyTorch dynamic int8 (``quantize_dynamic`` of every Linear, per-tensor weights): what users reach for."""
    from torch.ao.quantization import quantize_dynamic

    quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return quantized(*inputs)

    return Contender("torch-int8", call, _checked({"torch_threads": torch.get_num_threads()}, call(), ref))


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> dict[str, Any]:
    """Export to `path`, dynamo exporter first; returns what was used and how long it took."""
    names = [f"input{i}" for i in range(len(inputs))]
    errors: dict[str, str] = {}
    for exporter, dynamo in (("dynamo", True), ("torchscript", False)):
        t0 = time.perf_counter()
        try:
            torch.onnx.export(
                model, inputs, str(path), dynamo=dynamo, input_names=names, output_names=["output"], verbose=False
            )
        except Exception as exc:
            errors[exporter] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        return {"exporter": exporter, "export_s": round(time.perf_counter() - t0, 3), "export_errors": errors}
    raise RuntimeError(f"torch.onnx.export failed with every exporter: {errors}")


def build_ort(
    onnx_path: Path, inputs: tuple[torch.Tensor, ...], threads: int, ref: np.ndarray, export_info: dict[str, Any]
) -> Contender:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's workers otherwise keep spinning for tens of ms after a run, on the
    # core the next contender needs (fxpress's 2-thread MiniLM ran 2.5x slower
    # beside it). Spinning *during* a run, what ORT's speed relies on, is kept.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    info = {**export_info, "session_s": round(time.perf_counter() - t0, 3), "intra_op_num_threads": threads}
    name = "ort-int8" if onnx_path.stem.endswith("-int8") else "ort"
    return Contender(name, lambda: session.run(None, feed), _checked(info, session.run(None, feed), ref))


def quantize_onnx(onnx_path: Path) -> Path:
    """ONNX Runtime dynamic int8 of `onnx_path` (MatMul/Gemm weights int8, per-tensor), next to it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = onnx_path.with_name(f"{onnx_path.stem}-int8.onnx")
    if not out.exists():
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    return out
