"""How each contender is built for one (model, thread count) and called.

- ``eager``: the PyTorch module under ``torch.inference_mode``, fp32, with
  ``torch.set_num_threads(n)`` (set by the caller for the whole case);
- ``fxpress``: ``capture`` -> ``optimize("default")`` -> ``compile(target="x86",
  num_threads=n)``, called on numpy arrays (the public path, input checks and
  copies included); capture, optimize and compile seconds are recorded;
- ``fxpress-bf16``: the same with ``default,cast-bf16``: every linear in
  bfloat16 with float32 sums (AMX-BF16 tiles on AMX hosts), the rest fp32; on
  MiniLM only (a CNN's one linear would measure nothing): the counterpart of
  ``openvino-default``'s bf16, not an fp32 comparison; ``fxpress-int8-bf16``:
  ``fxpress-int8`` with the case's dynamic layers (MiniLM's FFN
  down-projections) in bf16 instead of per-row int8;
- ``fxpress-torch-compile``: ``torch.compile(model, backend="fxpress")`` with
  the ``default`` pipeline, called on torch tensors under ``inference_mode``
  (dynamo's guards and the backend's weight check included); the first call's
  seconds (capture through compile) are recorded; ``fxpress-torch-compile-int8``
  the same with ``fxpress-int8``'s passes and the case's calibration batches;
- ``ort``: ``torch.onnx.export`` (the dynamo exporter, falling back to the
  TorchScript one if it fails; which one was used is recorded), then an ONNX
  Runtime CPU session with ``intra_op_num_threads=n``, one inter-op thread,
  sequential execution, every graph optimisation on, and its workers told to
  stop spinning when a run ends (``session.force_spinning_stop``: they would
  otherwise spin on into the next contender's call);
- ``openvino``: the same ONNX file read by OpenVINO and compiled for its CPU
  plugin with ``INFERENCE_PRECISION_HINT=f32`` (on AMX/AVX512-BF16 machines
  its default is bf16, which would not be an fp32 comparison),
  ``INFERENCE_NUM_THREADS=n`` and the ``LATENCY`` performance hint (one
  stream), called synchronously through one infer request, one inference at
  a time (inputs and outputs copied, like ORT's ``run``);
- ``openvino-default``: the same, without the precision hint: what OpenVINO
  users get by default (bf16 on AMX / AVX512-BF16 CPUs, else f32; the row
  says which). A labelled extra, not an fp32 comparison;
- ``openvino-int8``: ``nncf.quantize`` of the OpenVINO model (default preset,
  ``model_type=TRANSFORMER`` for MiniLM) on an ``nncf.Dataset`` over the
  case's own calibration batches, compiled like ``openvino`` (f32 hint: the
  layers NNCF leaves in float stay fp32, as in fxpress's int8 builds).

Int8 contenders run only for cases with calibration data: ``fxpress-int8``
and ``openvino-int8`` (static int8, calibrated) on every such case,
``torch-int8`` and ``ort-int8`` (dynamic int8 of the Linear/MatMul layers,
nothing a CNN has) on MiniLM only (`applies`). A contender whose package is
not installed (`missing_packages`) is skipped with a note.

Each builder returns a `Contender` whose ``info`` holds the build facts and
the largest output difference from eager (a cheap sanity check that the
contender computes the same thing). A builder that fails raises; the caller
records the error for that contender and goes on.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tools.bench.machine import KEY_FLAGS

CONTENDERS = (
    "eager",
    "fxpress",
    "fxpress-bf16",
    "ort",
    "openvino",
    "openvino-default",
    "fxpress-int8",
    "fxpress-int8-bf16",
    "torch-int8",
    "ort-int8",
    "openvino-int8",
    "fxpress-torch-compile",
    "fxpress-torch-compile-int8",
)
# only for cases with calibration data
INT8 = ("fxpress-int8", "fxpress-int8-bf16", "torch-int8", "ort-int8", "openvino-int8", "fxpress-torch-compile-int8")
# calibrated: every case with calibration data
STATIC_INT8 = ("fxpress-int8", "openvino-int8", "fxpress-torch-compile-int8")
ONNX_BASED = ("ort", "ort-int8", "openvino", "openvino-default", "openvino-int8")  # need the case's ONNX export
# the packages (import names) a contender needs beyond torch and fxpress; missing ones skip it with a note
REQUIRES: dict[str, tuple[str, ...]] = {
    "ort": ("onnxruntime",),
    "ort-int8": ("onnxruntime",),
    "openvino": ("openvino",),
    "openvino-default": ("openvino",),
    "openvino-int8": ("openvino", "nncf"),
}
EXTRAS = {"onnxruntime": "dev", "openvino": "bench", "nncf": "bench"}  # the pyproject extra each package is in


def applies(name: str, family: str, has_calibration: bool) -> bool:
    """Whether contender `name` runs for a case of `family`: int8 only with calibration data, dynamic int8 and bf16
    on MiniLM."""
    if name in ("fxpress-bf16", "fxpress-int8-bf16"):
        return family == "minilm"
    if name not in INT8:
        return True
    if not has_calibration:
        return False
    return name in STATIC_INT8 or family == "minilm"


def missing_packages(name: str) -> list[str]:
    """The packages contender `name` needs that cannot be imported here (found without importing them)."""
    return [pkg for pkg in REQUIRES.get(name, ()) if importlib.util.find_spec(pkg) is None]


def install_hint(packages: list[str]) -> str:
    """How to install `packages` from the project's extras, e.g. ``pip install -e '.[bench]'``."""
    extras = ",".join(sorted({EXTRAS.get(p, "dev") for p in packages}))
    return f"pip install -e '.[{extras}]'"


@dataclass
class Contender:
    """A named zero-argument call to time, and what was learned building it."""

    name: str
    call: Callable[[], Any]
    info: dict[str, Any] = field(default_factory=dict)


def first_output(out: Any) -> np.ndarray:
    if isinstance(out, dict):  # a model returning a dict: compiled modules return it as one too
        out = next(iter(out.values()))
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


def fxpress_isa(manifest: dict[str, Any]) -> dict[str, Any]:
    """The instruction set an fxpress build targeted, and where that was read.

    Prefers an explicit ``isa`` entry of the artifact manifest (top level, then
    ``manifest["target"]``); older manifests have neither, so it falls back to
    the LLVM ``mcpu`` of the target string and the key flags among the
    target's ``requires`` (the host flags an ``x86`` build may use).
    """
    target = manifest.get("target") or {}
    mcpu_match = re.search(r'"mcpu"\s*:\s*"([^"]+)"|-mcpu=(\S+)', str(target.get("target", "")))
    mcpu = next((g for g in mcpu_match.groups() if g), None) if mcpu_match else None
    requires = [f for f in KEY_FLAGS if f in (target.get("requires") or [])]
    for source, value in (("manifest.isa", manifest.get("isa")), ("manifest.target.isa", target.get("isa"))):
        if isinstance(value, dict):  # a structured entry: its name, else the whole thing
            value = value.get("name") or value
        if value:
            return {"isa": str(value), "source": source, "mcpu": mcpu, "requires": requires}
    isa = f"{mcpu or 'unknown'} ({' '.join(requires) or 'no key flags'})"
    return {"isa": isa, "source": "target mcpu/requires", "mcpu": mcpu, "requires": requires}


def build_fxpress(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, ref: np.ndarray, bf16: bool = False
) -> Contender:
    """``default`` (fp32), or with `bf16` ``default,cast-bf16`` (every linear in bfloat16)."""
    import fxpress

    t0 = time.perf_counter()
    graph = fxpress.capture(model, inputs)
    t1 = time.perf_counter()
    graph = fxpress.optimize(graph, "default,cast-bf16" if bf16 else "default")
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
        "isa": fxpress_isa(compiled.manifest),
        "num_threads": compiled.num_threads,
    }

    def call() -> Any:
        return compiled(*arrays)

    return Contender("fxpress-bf16" if bf16 else "fxpress", call, _checked(info, call(), ref))


def _int8_passes(dynamic: tuple[str, ...], calibration: Any = None, bf16: bool = False) -> list[Any]:
    """``fold-bn, observe{per-channel, weight-reduce-range?, dynamic}, calibrate, fold-qdq`` (see `build_fxpress_int8`).

    `bf16`: the `dynamic` layers are skipped by observe and cast to bf16 after fold-qdq instead.
    """
    from fxpress.backends.tvm.targets import resolve_target
    from fxpress.passes import Calibrate, CastBf16, FoldBatchNorm, FoldQDQ, Observe

    seven_bit = resolve_target("x86").isa.int8_prefers_7bit
    if bf16:
        observe = Observe(per_channel=True, weight_reduce_range=seven_bit, skip=dynamic)
        return [FoldBatchNorm(), observe, Calibrate(data=calibration), FoldQDQ(), CastBf16(layers=dynamic)]
    observe = Observe(per_channel=True, weight_reduce_range=seven_bit, dynamic=dynamic)
    return [FoldBatchNorm(), observe, Calibrate(data=calibration), FoldQDQ()]


def build_torch_compile(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    ref: np.ndarray,
    calibration: list[tuple[torch.Tensor, ...]] | None = None,
    dynamic: tuple[str, ...] = (),
) -> Contender:
    """``torch.compile(model, backend="fxpress")``: ``default``, or with `calibration` the int8 passes."""
    options: dict[str, Any] = {"num_threads": threads, "tuning": False}
    if calibration is not None:
        options.update(pipeline=_int8_passes(dynamic), calibration=calibration)
    # no torch._dynamo.reset(): it would drop the other torch.compile contender's code too (dynamo keeps one
    # cache entry per backend for the same forward, so the fp32 and int8 builds live side by side)
    compiled = torch.compile(model, backend="fxpress", options=options)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return compiled(*inputs)

    t0 = time.perf_counter()
    out = call()
    info = {"first_call_s": round(time.perf_counter() - t0, 3), "torch_threads": torch.get_num_threads()}
    name = "fxpress-torch-compile" if calibration is None else "fxpress-torch-compile-int8"
    return Contender(name, call, _checked(info, out, ref))


def build_fxpress_int8(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    ref: np.ndarray,
    calibration: list[tuple[torch.Tensor, ...]],
    dynamic: tuple[str, ...],
    bf16: bool = False,
) -> Contender:
    """Static int8: ``fold-bn, observe{per-channel, weight-reduce-range?, dynamic}, calibrate, fold-qdq``.

    Calibrated on the case's batches. Where the host's ISA prefers them (AVX2:
    ``vpmaddubsw`` saturates on some 8-bit weights), 7-bit weights let every
    layer take the u8s8 kernel; on VNNI and AMX hosts weights keep all 8 bits.
    The case's `dynamic` layers (MiniLM's FFN down-projections) quantize their
    input per row at run time; with `bf16` (``fxpress-int8-bf16``) they run in
    bfloat16 instead (``observe{skip}``, then ``cast-bf16`` after fold-qdq).
    """
    import fxpress

    t0 = time.perf_counter()
    graph = fxpress.capture(model, inputs)
    graph = fxpress.optimize(graph, _int8_passes(dynamic, calibration, bf16))
    t1 = time.perf_counter()
    compiled = fxpress.compile(graph, target="x86", num_threads=threads, tuning=False)
    stats = next(r.stats for r in graph.trace if r.pipeline.startswith("fold-qdq"))
    info = {
        "quantize_s": round(t1 - t0, 3),
        "compile_s": round(time.perf_counter() - t1, 3),
        "pipeline": graph.pipeline,
        "int8_ops": stats.get("folded"),
        "float_ops": len(stats.get("float", [])),
        "isa": fxpress_isa(compiled.manifest),
        "num_threads": compiled.num_threads,
    }
    arrays = tuple(x.numpy() for x in inputs)

    def call() -> Any:
        return compiled(*arrays)

    return Contender("fxpress-int8-bf16" if bf16 else "fxpress-int8", call, _checked(info, call(), ref))


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


# OpenVINO's CPU plugin names each kernel it picked (``primitiveType`` in the runtime model's rt_info,
# e.g. ``brgconv_avx512_amx_1x1_I8``, ``gemm_mlas_f32``); these are the instruction-set words in those names
_OV_ISA_WORDS = ("amx", "avx512", "avx2", "sse41", "uni")
# the layers whose precision says whether the model computes in int8 (not the int8 reshapes and masks around them)
_OV_COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})


@functools.cache
def _ov_core() -> Any:
    import openvino as ov

    return ov.Core()


def openvino_kernels(compiled: Any) -> dict[str, Any]:
    """Which kernels OpenVINO's CPU plugin chose for `compiled`: counts by kernel name, by ISA word, int8 layers.

    Read from the runtime model after compilation (what will run, not what was
    asked for), so the report can say which ISA each OpenVINO build used, e.g.
    whether its int8 convolutions took AMX. ``int8_layers`` counts the
    convolution / fully-connected / matmul layers that run in u8/i8.
    """
    kinds: Counter[str] = Counter()
    int8 = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "primitiveType" not in rt:
            continue
        kind = rt["primitiveType"].astype(str)
        if kind.startswith("unknown"):  # reshapes, constants, eltwise fused into their neighbours
            continue
        kinds[kind] += 1
        layer = rt["layerType"].astype(str) if "layerType" in rt else ""
        precision = rt["runtimePrecision"].astype(str).lower() if "runtimePrecision" in rt else ""
        if layer in _OV_COMPUTE_LAYERS and precision in ("u8", "i8"):
            int8 += 1
    isa: Counter[str] = Counter()
    for kind, n in kinds.items():
        word = next((w for w in _OV_ISA_WORDS if w in kind.lower()), "other")
        isa[word] += n
    return {"kernel_isa": dict(isa.most_common()), "int8_layers": int8, "kernels": dict(kinds.most_common())}


def _type_name(value: Any) -> str:
    """An ``openvino.Type`` as its short name (``bf16``, ``f32``); anything else as ``str``."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _ov_config(threads: int, precision: str | None) -> dict[str, Any]:
    """CPU plugin properties: fixed threads, latency hint (one stream), and the inference precision when given."""
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


def _ov_contender(
    name: str, model: Any, inputs: tuple[torch.Tensor, ...], threads: int, ref: np.ndarray, info: dict[str, Any]
) -> Contender:
    """Compile `model` (an ``openvino.Model``) for the CPU and wrap one synchronous infer request."""
    precision = None if name == "openvino-default" else "f32"
    t0 = time.perf_counter()
    compiled = _ov_core().compile_model(model, "CPU", _ov_config(threads, precision))
    request = compiled.create_infer_request()
    feed = {i.get_any_name(): x.numpy() for i, x in zip(compiled.inputs, inputs, strict=True)}
    output = compiled.output(0)
    info = {
        **info,
        "compile_model_s": round(time.perf_counter() - t0, 3),
        "config": _ov_config(threads, precision),
        # what the plugin settled on (the default precision is bf16 on AMX / AVX512-BF16 CPUs)
        "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "num_streams": int(compiled.get_property("NUM_STREAMS")),
        "cpu_pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")),
        **openvino_kernels(compiled),
    }

    def call() -> np.ndarray:
        return request.infer(feed)[output]

    return Contender(name, call, _checked(info, call(), ref))


def build_openvino(
    name: str,
    onnx_path: Path,
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    ref: np.ndarray,
    export_info: dict[str, Any],
) -> Contender:
    """``openvino`` (f32 hint) or ``openvino-default`` (the plugin's default precision) from the ONNX export."""
    t0 = time.perf_counter()
    model = _ov_core().read_model(str(onnx_path))
    return _ov_contender(
        name, model, inputs, threads, ref, {**export_info, "read_s": round(time.perf_counter() - t0, 3)}
    )


# NNCF output by ONNX path: the quantized model does not depend on the thread count, so each case quantizes once
_NNCF_CACHE: dict[Path, tuple[Any, dict[str, Any]]] = {}


def quantize_openvino(
    onnx_path: Path,
    calibration: list[tuple[torch.Tensor, ...]],
    transformer: bool,
) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize`` of the OpenVINO model read from `onnx_path`, calibrated on `calibration`; cached per path.

    NNCF's default preset (``PERFORMANCE``: symmetric weights and
    activations; with ``ModelType.TRANSFORMER``, which MiniLM gets, ``MIXED``:
    asymmetric activations, plus SmoothQuant and the transformer ignored
    patterns), every calibration batch used (``subset_size``). NNCF's
    telemetry is switched off (``NNCF_CI``) before it is imported: a
    benchmark sends nothing anywhere.
    """
    if onnx_path in _NNCF_CACHE:
        return _NNCF_CACHE[onnx_path]
    os.environ.setdefault("NNCF_CI", "1")
    import nncf

    model = _ov_core().read_model(str(onnx_path))
    names = [i.get_any_name() for i in model.inputs]

    def transform(batch: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        return {n: x.numpy() for n, x in zip(names, batch, strict=True)}

    t0 = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration, transform),
        subset_size=len(calibration),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
    )
    info = {
        "quantize_s": round(time.perf_counter() - t0, 3),
        "calibration_batches": len(calibration),
        "model_type": "transformer" if transformer else "default",
        "preset": "default (mixed)" if transformer else "default (performance)",
    }
    _NNCF_CACHE[onnx_path] = (quantized, info)
    return quantized, info


def build_openvino_int8(
    onnx_path: Path,
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    ref: np.ndarray,
    export_info: dict[str, Any],
    calibration: list[tuple[torch.Tensor, ...]],
    transformer: bool,
) -> Contender:
    """OpenVINO + NNCF static int8 (see `quantize_openvino`), compiled with the f32 hint like ``openvino``."""
    quantized, qinfo = quantize_openvino(onnx_path, calibration, transformer)
    return _ov_contender("openvino-int8", quantized, inputs, threads, ref, {**export_info, **qinfo})
