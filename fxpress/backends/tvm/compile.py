"""Compile an fxpress `Graph` through TVM into a runnable `CompiledModule`.

Steps, each failing with a `BackendError` that names the step:

1. re-export the graph (``torch.export``), import it with
   ``from_exported_program`` (fxpress ops via `converters`), parameters as
   inputs, then detach them;
2. `pack_weights` (x86): constant-weight matmuls read panel-packed weights;
   ``LiftTransformParams``: everything computed from weights alone moves to
   ``main_transform_params``, run once here so the saved weights are final;
3. build with the ordered `lowering_stages` for the resolved target; with
   tuning records for it (tuning/records.py), an ``apply-records`` stage gives the
   functions that have one their tuned schedule before the rules run.

Cross targets (arm, cuda) build for use elsewhere: their module is saved, not
run; their parameter transform is built and run for the host.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from fxpress.backends.tvm.block_sparse import lower_block_sparse
from fxpress.backends.tvm.channels_last import lower_channels_last
from fxpress.backends.tvm.convert_map import converters
from fxpress.backends.tvm.lower import as_pass, lowering_stages
from fxpress.backends.tvm.pack_weights import pack_weights
from fxpress.backends.tvm.support import check_supported, guard
from fxpress.backends.tvm.targets import TargetSpec, resolve_target
from fxpress.backends.tvm.tuning.records import apply_records, open_records
from fxpress.errors import BackendError, PerformanceWarning
from fxpress.ir import annotations as notes
from fxpress.ir.graph import Graph
from fxpress.progress import enabled, step
from fxpress.quant.qat_graph import is_fake_quant
from fxpress.runtime.module import CompiledModule
from fxpress.sharing.annotations import SharedWeights
from fxpress.version import __version__


def _tensor_spec(val: Any, name: str) -> dict[str, Any]:
    shape = [int(d) if isinstance(d, int) else None for d in val.shape]
    return {"name": name, "shape": shape, "dtype": str(val.dtype).removeprefix("torch.")}


def _signature(graph: Graph) -> dict[str, Any]:
    inputs = [_tensor_spec(p.meta["val"], p.name) for p in graph.inputs]
    out_arg = graph.output_node.args[0]
    outs: list[Any] = list(out_arg) if isinstance(out_arg, tuple | list) else [out_arg]
    outputs = [_tensor_spec(o.meta["val"], f"output{i}") for i, o in enumerate(outs)]
    spec = getattr(graph.gm, "_out_spec", None)
    single = bool(spec.is_leaf()) if spec is not None else not isinstance(graph.output_node.args[0], tuple | list)
    signature: dict[str, Any] = {"inputs": inputs, "outputs": outputs, "single_output": single}
    tree = output_tree(spec) if spec is not None and not single else None
    if tree is not None and tree != {"kind": "tuple", "children": [{"kind": "leaf"}] * len(outputs)}:
        signature["output_tree"] = tree  # the runtime rebuilds dicts, lists and nesting from it
    return signature


def output_tree(spec: Any) -> dict[str, Any]:
    """The nesting of a model's outputs (a torch pytree spec) as JSON the torch-free runtime can rebuild.

    dicts, and mappings flattened by key such as transformers' ModelOutput, come back as dicts; namedtuples
    as namedtuples of the same name and fields; tuples and lists as themselves. Other containers are refused:
    returning them as a flat tuple would hand the caller a different structure than eager PyTorch did.
    """
    if spec.is_leaf():
        return {"kind": "leaf"}
    children = [output_tree(c) for c in spec.children()]
    kind, context = spec.type, spec.context
    if kind is tuple or kind is list:
        return {"kind": kind.__name__, "children": children}
    if isinstance(context, type) and issubclass(context, tuple) and hasattr(context, "_fields"):
        return {"kind": "namedtuple", "name": context.__name__, "fields": list(context._fields), "children": children}
    if isinstance(context, list | tuple) and all(isinstance(k, str) for k in context) and len(context) == len(children):
        return {"kind": "dict", "keys": list(context), "children": children}
    raise BackendError(
        f"the model returns a {getattr(kind, '__name__', kind)} fxpress cannot rebuild from the compiled outputs; "
        "return a tensor, a tuple, a list, a namedtuple or a dict with string keys from forward()"
    )


def _constants(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """The exported program's weight placeholders by name, with their values (converters inspect int8 weights)."""
    out = {}
    for s in ep.graph_signature.input_specs:
        value = ep.state_dict.get(s.target) if s.target in ep.state_dict else ep.constants.get(s.target)
        if isinstance(value, torch.Tensor) and hasattr(s.arg, "name"):
            out[s.arg.name] = value
    return out


def _decompose(ep: torch.export.ExportedProgram, graph: Graph) -> torch.export.ExportedProgram:
    """`ep` in core ATen ops, what the importer would do itself (so the checks see the ops it converts).

    A ``view`` valid in eager PyTorch can fail when re-traced on a decomposed producer with other strides
    (GPT-2: sdpa's output, transposed back, then ``view``; the decomposed sdpa's result is contiguous in
    another order). Values do not depend on strides, so then the graph's views become reshapes (on a
    copy) and it is decomposed again.
    """
    try:
        return ep.run_decompositions()
    except (RuntimeError, ValueError) as exc:
        if "view" not in str(exc):
            raise
    out = graph.copy()
    for node in out.fx.nodes:
        if node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    out.gm.recompile()
    return out.export().run_decompositions()


def _import(graph: Graph, spec: TargetSpec) -> tuple[tvm.IRModule, list[tvm.runtime.Tensor], list[str]]:
    """(the lifted Relax module, its untransformed parameters, the graph target of each: '' for none)."""
    try:
        ep = graph.export()
    except Exception as exc:
        raise BackendError(f"re-exporting the graph for TVM failed: {type(exc).__name__}: {exc}") from exc
    try:
        ep = _decompose(ep, graph)
    except Exception as exc:
        raise BackendError(f"decomposing the graph to core ATen ops failed: {type(exc).__name__}: {exc}") from exc
    convert = converters(spec, _constants(ep))
    check_supported(ep, graph, convert)
    try:
        mod = from_exported_program(
            ep, keep_params_as_input=True, custom_convert_map=guard(convert, ep, graph), run_ep_decomposition=False
        )
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(
            f"TVM's PyTorch importer rejected the graph: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
            "keep the ops it lacks out of the graph, or add a converter in fxpress/backends/tvm/convert_map.py"
        ) from exc
    mod, params = relax.frontend.detach_params(mod)
    by_placeholder = {s.arg.name: str(s.target) for s in ep.graph_signature.input_specs if s.target is not None}
    raw = mod["main"].params[int(mod["main"].attrs["num_input"]) :]
    targets = [by_placeholder.get(v.name, "") for v in raw]
    if spec.isa.arch == "x86_64":
        mod = pack_weights(mod, spec.target)
    return relax.transform.LiftTransformParams()(mod), list(params.get("main", [])), targets


def import_graph(graph: Graph, spec: TargetSpec) -> tuple[tvm.IRModule, list[tvm.runtime.Tensor], list[dict[str, Any]]]:
    """Steps 1-2: the Relax module every build for `spec` starts from, its parameters, the block-sparse decisions.

    Shared by compile and tune (tuning/tasks.py), so tuned workloads are the functions compile schedules.
    """
    mod, params, sparse, _ = import_graph_targets(graph, spec)
    return mod, params, sparse


def import_graph_targets(
    graph: Graph, spec: TargetSpec
) -> tuple[tvm.IRModule, list[tvm.runtime.Tensor], list[dict[str, Any]], list[str]]:
    """`import_graph`, plus the graph target (``get_attr`` name) of each untransformed parameter ('' for none)."""
    graph, sparse = lower_block_sparse(graph, spec)
    graph, _ = lower_channels_last(graph, spec)
    mod, params, targets = _import(graph, spec)
    return mod, params, sparse, targets


def _hashed(graph: Graph, targets: list[str]) -> dict[str, Any]:
    """The manifest entries that store HashedNets weights as buckets, {} when the graph has none.

    ``raw_params`` names the untransformed parameters (``r{i}_{target}``), ``hashed_params`` the hashed ones
    with their bucket count and seed; save.py then writes the untransformed parameters and load.py runs the
    library's transform on them.
    """
    hashed = {}
    for node in graph.nodes("get_attr"):
        note = notes.get(node, SharedWeights.key)
        if isinstance(note, SharedWeights) and note.method == "hash":
            hashed[str(node.target)] = {"buckets": note.clusters, "seed": note.seed}
    if not hashed or not set(hashed) <= set(targets):
        return {}  # a hashed weight the backend rewrote (e.g. block-sparse) is stored as the module reads it
    names = [f"r{i}_{t or 'constant'}" for i, t in enumerate(targets)]
    return {
        "weights_stage": "raw",
        "raw_params": names,
        "hashed_params": {n: hashed[t] for n, t in zip(names, targets, strict=True) if t in hashed},
    }


def _build(
    mod: tvm.IRModule,
    spec: TargetSpec,
    timings: dict[str, float],
    replay: tvm.transform.Pass | None = None,
    progress: bool = False,
) -> tvm.runtime.Executable:
    try:
        with spec.target, step(f"build for {spec.name}", progress):
            pipeline = as_pass(lowering_stages(spec, replay), timings, progress)
            return tvm.compile(mod, target=spec.target, relax_pipeline=pipeline)
    except Exception as exc:
        raise BackendError(f"building for target {spec.name!r} failed: {type(exc).__name__}: {exc}") from exc


def _transform_params(exe: tvm.runtime.Executable, params: list[tvm.runtime.Tensor]) -> list[tvm.runtime.Tensor]:
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main_transform_params"](params)
    return [tvm.runtime.tensor(np.require(t.numpy(), requirements="C")) for t in out]


def _warn_dynamic_int8(graph: Graph) -> None:
    """Warn when integer layers have a symbolic size: their tile kernels need static shapes.

    With a dynamic batch they run TVM's generic loops instead: a 64 x 512 -> 1024 -> 512 int8 MLP took
    88 ms a call against 0.83 ms built static (1 thread, Intel Xeon with AMX); fp32 loses 2.6x.
    """
    dynamic = [
        n.name
        for n in graph.nodes("call_function")
        if str(getattr(n.target, "namespace", "")) == "fxpress"
        and "quantized" in str(n.target)
        and isinstance(v := n.meta.get("val"), torch.Tensor)
        and any(not isinstance(d, int) for d in v.shape)
    ]
    if dynamic:
        warnings.warn(
            f"fxpress.compile: {len(dynamic)} integer layers ({', '.join(dynamic[:3])}{', ...' if len(dynamic) > 3 else ''}) "
            "have a dynamic size; their tile kernels need static shapes, so they run generic loops, "
            "about 100x slower measured: capture with static shapes (one build per batch size), or use "
            "torch.compile(model, backend='fxpress'), which builds a static module for each shape it sees",
            PerformanceWarning,
            stacklevel=4,  # the caller of fxpress.compile
        )


def compile_graph(
    graph: Graph,
    target: str | TargetSpec = "x86",
    *,
    num_threads: int | None = None,
    cross: bool = False,
    tuning: bool | str | os.PathLike[str] | None = "auto",
    progress: bool | None = None,
) -> CompiledModule:
    """Compile `graph` for the named target preset (see targets.py), or for an already resolved `TargetSpec`.

    `tuning`: ``"auto"`` replays the default cache's records for this target
    when there are any, a path names another cache, False uses the rules only.
    `progress`: report each step (export/import, build with its lowering stages,
    transform parameters) on stderr; default ``FXPRESS_PROGRESS``, else whether
    stderr is a terminal (fxpress.progress).
    """
    if not isinstance(graph, Graph):
        raise BackendError(f"compile() takes an fxpress Graph (from fxpress.capture), got {type(graph).__name__}")
    if any(is_fake_quant(n) for n in graph.nodes("call_function")):
        raise BackendError(
            "the graph still holds fake-quantize ops (quantization-aware training); run freeze-fake-quant "
            "and fold-qdq before compiling, e.g. fxpress.optimize(graph, [FreezeFakeQuant(), FoldQDQ()])"
        )
    spec = target if isinstance(target, TargetSpec) else resolve_target(target, num_threads=num_threads, cross=cross)
    _warn_dynamic_int8(graph)
    show = enabled(progress)
    with step("export/import", show):
        mod, params, sparse, targets = import_graph_targets(graph, spec)
    timings: dict[str, float] = {}
    records = open_records(spec, tuning)
    applied: list[str] = []
    exe = _build(mod, spec, timings, apply_records(records, applied) if records else None, show)
    if spec.host_runnable:
        spec.isa.prepare_runtime()  # e.g. AMX tile permission, before anything of the build runs
    host_exe = exe if spec.host_runnable else _build(mod, resolve_target("x86"), {}, progress=show)
    with step("transform parameters", show):
        final = _transform_params(host_exe, params)
    names = [f"p{i}_{v.name}" for i, v in enumerate(mod["main"].params[int(mod["main"].attrs["num_input"]) :])]
    hashed = _hashed(graph, targets) if spec.host_runnable else {}
    manifest = {
        "model": graph.model_name,
        **_signature(graph),
        "target": {**spec.describe(), "host_runnable": spec.host_runnable, "cross_compiler": spec.cross_compiler},
        "num_threads": int(spec.target.attrs.get("num-cores", 0)) if spec.device == "cpu" else 0,
        "params": names,
        "block_sparse": sparse,
        **hashed,
        "tuning": {
            "records": str(records.directory) if records else None,
            "functions_from_records": len(applied),
            "functions": applied,
        },
        "pipeline": graph.pipeline,
        "trace": [r.to_json() for r in graph.trace],
        "lowering_s": {k: round(v, 4) for k, v in timings.items()},
        "versions": {
            "fxpress": __version__,
            "tvm": tvm.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
        },
    }
    module = CompiledModule(exe, final, manifest, device=spec.device, runnable=spec.host_runnable)
    if hashed:
        module.raw_params = [np.require(p.numpy(), requirements="C") for p in params]
    return module
