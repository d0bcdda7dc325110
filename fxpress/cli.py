"""The ``fxpress`` command line.

    fxpress compile MODULE:FACTORY --input-shape 1,3,224,224 --passes "fold-bn,dce" --target x86 -o DIR
    fxpress export MODULE:FACTORY|MODEL.pt2 --passes int8 --calibration DATA --format onnx|pt2 -o FILE
    fxpress tune MODULE:FACTORY --input-shape 1,3,224,224 --target x86 --budget-s 60 [--trials N] [--cache-dir DIR]
    fxpress run DIR --input x.npy [--output y.npy]
    fxpress inspect DIR
    fxpress prune-report MODULE:FACTORY --input-shape 1,3,224,224 --ratio 0.5
    fxpress low-rank-report MODULE:FACTORY --input-shape 1,3,224,224 --ratio 0.5 [--calibration DATA]
    fxpress quant-report MODULE:FACTORY --input-shape 8,3,32,32 --calibration DIR_OR_MODULE:FUNCTION
    fxpress passes
    fxpress demo [-o DIR]

``MODULE:FACTORY`` names a Python module (dotted, or a path to a .py file) and
a callable in it returning an ``nn.Module``; a path ending in ``.pt2`` names a
program saved with ``torch.export.save`` instead. Every error fxpress raises on
purpose is printed as ``error: ...`` with exit status 2, never as a traceback;
``run`` and ``inspect`` import neither torch nor the compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from fxpress import progress
from fxpress.errors import FxpressError
from fxpress.loading import import_module_or_file


class UsageError(FxpressError):
    """A command-line argument is wrong."""


QUANT_PIPELINE = (
    "int8"  # the registry's named int8 pipeline (fxpress.passes.registry.PIPELINES), by name: no torch import
)


def _progress(msg: str) -> float:
    """Announce a step on stderr (unless FXPRESS_PROGRESS=0: the CLI's own steps show by default)."""
    if progress.enabled(default=True):
        print(f"[fxpress] {msg} ...", file=sys.stderr, flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    """Close the step `_progress` started at `start` with its seconds."""
    if progress.enabled(default=True):
        print(f"[fxpress]   done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _load_factory(spec: str) -> Any:
    if ":" not in spec:
        raise UsageError(f"model {spec!r} must be MODULE:FACTORY, e.g. mypkg.models:build or ./model.py:build")
    module_name, _, attr = spec.rpartition(":")
    try:
        module = import_module_or_file(module_name)
    except FileNotFoundError:
        raise UsageError(f"model file {module_name} does not exist") from None
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r}")
    return factory


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,3,224,224") from None
    if any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r} must have positive dimensions")
    return shape


def _random_inputs(args: argparse.Namespace) -> tuple[Any, ...]:
    """Seeded random inputs of the --input-shape / --input-dtype shapes and types."""
    import torch

    dtypes = args.input_dtype or ["float32"] * len(args.input_shape)
    if len(dtypes) != len(args.input_shape):
        raise UsageError("give one --input-dtype per --input-shape, or none (float32)")
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for shape, dtype in zip(args.input_shape, dtypes, strict=True):
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise UsageError(f"--input-dtype {dtype!r} is not a torch dtype (float32, int64, ...)")
        x = torch.randn(shape, generator=gen) if dt.is_floating_point else torch.randint(0, 2, shape, generator=gen)
        inputs.append(x.to(dt))
    return tuple(inputs)


def _capture_factory(args: argparse.Namespace) -> Any:
    """Build the model named MODULE:FACTORY and capture it with random inputs of the given shapes.

    A model ending in ``.pt2`` is a saved torch.export program instead: it is
    loaded with its own example inputs (or random ones of --input-shape).
    """
    import torch

    import fxpress

    if args.model.endswith(".pt2"):
        inputs = _random_inputs(args) if args.input_shape else None
        t = _progress(f"loading the torch.export program {args.model}")
        graph = fxpress.load_pt2(args.model, inputs)
        _done(t)
        return graph
    if not args.input_shape:
        raise UsageError("give at least one --input-shape (one per model input)")
    inputs = _random_inputs(args)
    model = _load_factory(args.model)()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{args.model} returned a {type(model).__name__}, not a torch.nn.Module")
    t = _progress(f"capturing {args.model}")
    graph = fxpress.capture(model, inputs)
    _done(t)
    return graph


def cmd_prune_report(args: argparse.Namespace) -> int:
    import fxpress
    from fxpress.reports.prune_report import prune_report

    graph = _capture_factory(args)
    if args.passes:
        graph = fxpress.optimize(graph, args.passes)
    report = prune_report(graph, args.ratio, per_layer=not args.global_ranking, round_to=args.round_to)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report)
    return 0


def cmd_low_rank_report(args: argparse.Namespace) -> int:
    import fxpress
    from fxpress.lowrank import LowRankRequest
    from fxpress.quant.calib_data import load_calibration
    from fxpress.reports.low_rank_report import low_rank_report

    opts = ("method", "energy", "ratio", "ranks", "layers", "skip", "rank_multiple")
    request = LowRankRequest(**{k: getattr(args, k) for k in opts if getattr(args, k) is not None})
    graph = _capture_factory(args)
    if args.passes:
        graph = fxpress.optimize(graph, args.passes)
    data = load_calibration(args.calibration, graph) if args.calibration else None
    report = low_rank_report(graph, request, data=data, limit=args.limit)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report)
    return 0


def _check_calibration_flag(passes: list[Any], calibration: str | None) -> None:
    """A pipeline with calibrate needs --calibration, and --calibration needs a calibrate to feed."""
    from fxpress.passes import Calibrate

    has = any(isinstance(p, Calibrate) for p in passes)
    if has and not calibration:
        raise UsageError(
            "calibrate needs calibration data, and pipeline text cannot carry it; on the command line give "
            "--calibration DIR (.npy / .npz batches) or --calibration MODULE:FUNCTION (returning input tuples)"
        )
    if calibration and not has:
        raise UsageError("--calibration is given but the pipeline has no calibrate pass; add observe,calibrate")


def _with_calibration(passes: list[Any], calibration: str | None, graph: Any) -> list[Any]:
    """The pipeline with every calibrate fed the batches --calibration names."""
    import dataclasses

    from fxpress.passes import Calibrate
    from fxpress.quant.calib_data import load_calibration

    if not calibration:
        return passes
    t = _progress(f"loading calibration data {calibration}")
    data = load_calibration(calibration, graph)
    _done(t)
    return [dataclasses.replace(p, data=data) if isinstance(p, Calibrate) else p for p in passes]


def cmd_quant_report(args: argparse.Namespace) -> int:
    from fxpress.passes.registry import parse_pipeline
    from fxpress.quant.calib_data import load_calibration
    from fxpress.reports.quant_report import quant_report

    parse_pipeline(args.passes)  # bad pipeline text fails before any work
    if args.limit < 0:
        raise UsageError(f"--limit must be >= 0 (0: all batches), got {args.limit}")
    graph = _capture_factory(args)
    data = load_calibration(args.calibration, graph)
    t = _progress(f"quantizing with {args.passes!r} and measuring each layer")
    report = quant_report(
        graph,
        data,
        passes=args.passes,
        limit=args.limit,
        weight_scheme=args.weight_scheme,
        weight_bits=args.weight_bits,
        compare_weights=args.compare_weights,
        bf16=args.bf16,
    )
    _done(t)
    print(json.dumps(report.to_json(), indent=2) if args.json else report)
    return 0


def cmd_auto(args: argparse.Namespace) -> int:
    """`fxpress auto`: search per-layer methods under a budget; print the per-layer table and the Pareto set."""
    from fxpress.auto import Budget, auto
    from fxpress.quant.calib_data import load_calibration

    budget = Budget.parse(args.budget)  # a bad budget fails before any work
    graph = _capture_factory(args)
    data = load_calibration(args.calibration, graph)
    held = load_calibration(args.held_out, graph) if args.held_out else None
    evaluate = _load_factory(args.evaluate) if args.evaluate else None
    result = auto(
        graph,
        data,
        budget=budget,
        evaluate=evaluate,
        held_out=held,
        metric=args.metric,
        target=args.target,
        threads=args.threads,
        methods=args.method or None,
        weight_bits=args.weight_bits or (8, 4),
        seed=args.seed,
        max_candidates=args.max_candidates,
        confirm=args.confirm,
        cache_dir=args.cache,
        out_dir=args.out,
    )
    print(json.dumps(result.to_json(), indent=2) if args.json else result.text())
    if args.out:
        print(f"wrote {result.files['json']} and {result.files['plot']}", file=sys.stderr)
    return 0 if result.met else 3  # 2 is an error (main), 3 a budget no candidate meets


def cmd_compile(args: argparse.Namespace) -> int:
    import fxpress
    from fxpress.backends.tvm.targets import resolve_target
    from fxpress.passes.manager import DumpIR, Instrument, PrintIRAfter, Timing
    from fxpress.passes.registry import parse_pipeline

    passes = parse_pipeline(args.passes)  # bad pipeline text fails before any work
    _check_calibration_flag(passes, args.calibration)
    resolve_target(args.target, num_threads=args.threads, cross=args.cross)
    instruments: list[Instrument] = []
    if args.print_ir_after_all:
        instruments.append(PrintIRAfter())
    if args.timing:
        instruments.append(Timing())
    if args.dump_ir:
        instruments.append(DumpIR(args.dump_ir))
    graph = _capture_factory(args)
    passes = _with_calibration(passes, args.calibration, graph)
    t = _progress(f"running passes {args.passes!r}")
    graph = fxpress.optimize(graph, passes, instruments=instruments)
    _done(t)
    t = _progress(f"compiling for {args.target} through TVM")
    compiled = fxpress.compile(
        graph,
        target=args.target,
        num_threads=args.threads,
        cross=args.cross,
        tuning=False if args.no_tuning else "auto",
    )
    _done(t)
    path = compiled.save(args.output)
    print(f"wrote {path}")
    from fxpress.runtime.artifact import read_manifest

    _print_storage(read_manifest(path), argparse.Namespace(sizes=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import fxpress
    from fxpress.passes.registry import parse_pipeline

    fmt = args.format or {".onnx": "onnx", ".pt2": "pt2"}.get(os.path.splitext(args.output)[1].lower())
    if fmt is None:
        raise UsageError(f"give --format onnx or pt2 (the output {args.output!r} ends in neither .onnx nor .pt2)")
    passes = parse_pipeline(args.passes)  # bad pipeline text fails before any work
    _check_calibration_flag(passes, args.calibration)
    graph = _capture_factory(args)
    passes = _with_calibration(passes, args.calibration, graph)
    t = _progress(f"running passes {args.passes!r}")
    graph = fxpress.optimize(graph, passes)
    _done(t)
    t = _progress(f"writing {fmt}")
    if fmt == "pt2":
        path = graph.save_pt2(args.output)
        _done(t)
        print(f"wrote {path} (a torch.export program: `import fxpress` before torch.export.load runs it)")
        return 0
    report = fxpress.to_onnx(graph, args.output, activations=args.activations)
    _done(t)
    print(json.dumps(report.to_json(), indent=2) if args.json else report)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import fxpress
    from fxpress.backends.tvm.targets import resolve_target
    from fxpress.backends.tvm.tuning.search import tune
    from fxpress.passes.registry import parse_pipeline

    if args.budget_s <= 0:
        raise UsageError(f"--budget-s must be a positive number of seconds, got {args.budget_s:g}")
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1 (trials per task), got {args.trials}")
    passes = parse_pipeline(args.passes)  # bad pipeline text or target fails before any work
    _check_calibration_flag(passes, args.calibration)
    resolve_target(args.target)
    graph = _capture_factory(args)
    graph = fxpress.optimize(graph, _with_calibration(passes, args.calibration, graph))
    report = tune(
        graph,
        args.target,
        budget_s=args.budget_s,
        trials=args.trials,
        cache_dir=args.cache_dir,
        progress=progress.enabled(default=True),  # a tune takes minutes: its task lines show unless FXPRESS_PROGRESS=0
        only_faster=not args.keep_slower,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from fxpress.runtime import load

    module = load(args.artifact, num_threads=args.threads)
    inputs = []
    for p in args.input:
        try:
            inputs.append(np.load(p, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --input {p}: {exc}") from exc
    outputs = module.run_numpy(*inputs)
    for i, out in enumerate(outputs):
        flat = out.reshape(-1)
        preview = ", ".join(f"{v:.4g}" for v in flat[:6]) + (", ..." if flat.size > 6 else "")
        print(f"output{i}: {out.dtype}{list(out.shape)} [{preview}]")
    if args.output:
        if len(outputs) == 1:
            np.save(args.output, outputs[0])
        else:
            np.savez(args.output, *outputs)
        print(f"wrote {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fxpress.runtime.artifact import read_manifest

    m = read_manifest(args.artifact)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"artifact   {args.artifact}")
    print(f"model      {m.get('model')}")
    print(f"target     {m['target']['name']}  ({m['target']['target']})")
    print(f"threads    {m.get('num_threads')}")
    for s in m["inputs"]:
        print(f"input      {s['name']}: {s['dtype']}{['?' if d is None else d for d in s['shape']]}")
    for s in m["outputs"]:
        print(f"output     {s['name']}: {s['dtype']}{['?' if d is None else d for d in s['shape']]}")
    print(f"pipeline   {m.get('pipeline') or '(none)'}")
    print("versions   " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))
    print("files      " + ", ".join(f"{k} ({v[:12]})" for k, v in m["files"].items()))
    _print_storage(m, args)
    rows = [("pass", "ms", "ops", "param bytes", "modified")]
    for r in m.get("trace", []):
        rows.append(
            (
                r["pass"],
                f"{r['wall_s'] * 1e3:.1f}",
                f"{r['nodes_before']}->{r['nodes_after']}",
                f"{r['param_bytes_before']}->{r['param_bytes_after']}",
                "yes" if r["modified"] else "no",
            )
        )
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        print("\ntrace")
        for r in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _print_storage(m: dict[str, Any], args: argparse.Namespace) -> None:
    from fxpress.reports.size import artifact_sizes, human_bytes

    storage = m.get("storage")
    if storage:
        forms = ", ".join(f"{k} {v}" for k, v in storage["forms"].items() if v) or "all dense"
        ratio = storage["dense_bytes"] / max(storage["stored_bytes"], 1)
        print(
            f"weights    {human_bytes(storage['stored_bytes'])} stored of {human_bytes(storage['dense_bytes'])} "
            f"(x{ratio:.1f}; {forms}; decoded {storage['decode']})"
        )
    if args.sizes:
        report = artifact_sizes(args.artifact)
        print("\nweight sizes (dense fp32, as stored, entropy-coded estimate: Deep Compression's Huffman stage)")
        print("  " + report.text().replace("\n", "\n  "))


def cmd_passes(args: argparse.Namespace) -> int:
    import dataclasses

    from fxpress.backends.tvm.targets import TARGETS
    from fxpress.passes.registry import PASSES, PIPELINES

    print("passes:")
    for name, cls in PASSES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:16} {doc}")
        for f in dataclasses.fields(cls):
            print(f"  {'':16}   {f.name.replace('_', '-')}: {f.type} = {f.default!r}")
        facts = {
            "requires": cls.requires,
            "establishes": cls.establishes,
            "invalidates": cls.invalidates,
            "forbids": cls.forbids,
        }
        if any(facts.values()):
            print(f"  {'':16}   " + ", ".join(f"{k} {sorted(str(f) for f in v)}" for k, v in facts.items()))
    print("named pipelines:")
    for name, text in PIPELINES.items():
        print(f"  {name:16} {text}")
    print("targets:")
    for name, text in {"eager": "PyTorch (the reference)", **TARGETS}.items():
        print(f"  {name:16} {text}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fxpress.demo import run_demo

    run_demo(args.output, epochs=args.epochs, num_threads=args.threads)
    return 0


def _add_model_args(p: argparse.ArgumentParser, example_shape: str = "1,3,224,224") -> None:
    """The model and its example inputs, as every command that captures a model takes them."""
    p.add_argument(
        "model",
        help="MODULE:FACTORY returning an nn.Module (MODULE may be a .py path), or a torch.export program (.pt2)",
    )
    p.add_argument("--input-shape", action="append", type=_parse_shape, help=f"e.g. {example_shape} (repeat per input)")
    p.add_argument("--input-dtype", action="append", help="torch dtype per input (default float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxpress", description="A model-compression compiler for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="capture, optimize and compile a model into an artifact directory")
    _add_model_args(c)
    c.add_argument("--passes", default="default", help='pipeline text, e.g. "fold-bn,dce" (default: default)')
    c.add_argument(
        "--target",
        default="x86",
        help="x86 (the host, its strongest ISA), x86-64, x86-avx2, x86-avx512, x86-vnni, x86-amx, arm, cuda",
    )
    c.add_argument("--threads", type=int, default=None, help="threads the compiled code uses (default: all cores)")
    c.add_argument("--cross", action="store_true", help="build for another machine (skip the host CPU check)")
    c.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    c.add_argument("--timing", action="store_true", help="print a per-pass timing table")
    c.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    c.add_argument("--calibration", metavar="DATA", help="calibrate's data: a .npy/.npz directory or MODULE:FUNCTION")
    c.add_argument("--no-tuning", action="store_true", help="ignore `fxpress tune` records; schedule rules only")
    c.set_defaults(func=cmd_compile)

    e = sub.add_parser("export", help="capture and optimize a model, then write it as ONNX (int8 as QDQ) or .pt2")
    _add_model_args(e)
    e.add_argument("--passes", default="default", help='pipeline text, e.g. "int8" (default: default)')
    e.add_argument("--calibration", metavar="DATA", help="calibrate's data: a .npy/.npz directory or MODULE:FUNCTION")
    e.add_argument("--format", choices=("onnx", "pt2"), help="default: from the output's suffix")
    e.add_argument(
        "--activations", choices=("uint8", "int8"), default="uint8", help="ONNX type of int8 activations (uint8)"
    )
    e.add_argument("-o", "--output", required=True, help="file to write (.onnx or .pt2)")
    e.add_argument("--json", action="store_true", help="print the ONNX export report as JSON")
    e.set_defaults(func=cmd_export)

    tu = sub.add_parser("tune", help="search kernel schedules (MetaSchedule) for a model; compile replays the winners")
    _add_model_args(tu)
    tu.add_argument("--passes", default="default", help="the pipeline you will compile with (default: default)")
    tu.add_argument("--calibration", metavar="DATA", help="calibrate's data: a .npy/.npz directory or MODULE:FUNCTION")
    tu.add_argument("--target", default="x86", help="an x86 preset this machine can run (default x86)")
    tu.add_argument("--budget-s", type=float, default=60.0, help="search time in seconds, shared by the tasks")
    tu.add_argument("--trials", type=int, default=None, help="at most N trials per task (default: time decides)")
    tu.add_argument("--cache-dir", help="records directory (default $FXPRESS_TUNING_CACHE or ~/.cache/fxpress/tuning)")
    tu.add_argument("--keep-slower", action="store_true", help="cache the best record even if the rule is faster")
    tu.add_argument("--json", action="store_true", help="print the report as JSON")
    tu.set_defaults(func=cmd_tune)

    r = sub.add_parser("run", help="run an artifact on .npy inputs (TVM runtime only)")
    r.add_argument("artifact")
    r.add_argument("--input", action="append", default=[], help=".npy file per model input, in order")
    r.add_argument("--output", help="write the output(s) to this .npy/.npz file")
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("inspect", help="show an artifact's manifest and pass trace")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.add_argument(
        "--sizes", action="store_true", help="per-tensor weight sizes: dense fp32, stored, entropy-coded estimate"
    )
    i.set_defaults(func=cmd_inspect)

    pr = sub.add_parser("prune-report", help="what channel pruning at a ratio would remove (changes nothing)")
    _add_model_args(pr)
    pr.add_argument("--ratio", type=float, default=0.5, help="fraction of channels to remove (default 0.5)")
    pr.add_argument("--passes", default="fold-bn", help="pipeline to run first (default fold-bn)")
    pr.add_argument("--global-ranking", action="store_true", help="rank channels across layers, not per layer")
    pr.add_argument("--round-to", type=int, default=1, help="keep channel counts a multiple of this")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.set_defaults(func=cmd_prune_report)

    lr = sub.add_parser(
        "low-rank-report", help="per-layer ranks, sizes and errors of low-rank factors (changes nothing)"
    )
    _add_model_args(lr)
    lr.add_argument("--passes", default="fold-bn", help="pipeline to run first (default fold-bn)")
    lr.add_argument("--method", help="kxk convs: tucker2 (default), spatial or svd; linears take the SVD")
    lr.add_argument("--energy", type=float, help="rank keeping this fraction of the squared singular values")
    lr.add_argument("--ratio", type=float, help="factors hold at most this fraction of weights/MACs (default 0.5)")
    lr.add_argument("--ranks", help="explicit ranks, NAME=R;NAME2=RINxROUT (NAME: a regex over layer names)")
    lr.add_argument("--layers", help="only layers one of whose names fully matches this regex")
    lr.add_argument("--skip", action="append", help="regex of layers to leave alone (repeatable)")
    lr.add_argument("--rank-multiple", type=int, help="round ranks to a multiple of this (default 16)")
    lr.add_argument(
        "--calibration", metavar="DATA", help="inputs for output errors: .npy/.npz directory or MODULE:FUNCTION"
    )
    lr.add_argument("--limit", type=int, default=0, help="use at most N calibration batches (default 0: all)")
    lr.add_argument("--json", action="store_true", help="print the report as JSON")
    lr.set_defaults(func=cmd_low_rank_report)

    qr = sub.add_parser("quant-report", help="per-layer int8 error on calibration data, worst first")
    _add_model_args(qr, example_shape="8,3,32,32")
    qr.add_argument("--calibration", required=True, metavar="DATA", help="a .npy/.npz directory or MODULE:FUNCTION")
    qr.add_argument(
        "--passes",
        default=QUANT_PIPELINE,
        help=f"quantization pipeline (default {QUANT_PIPELINE}; `fxpress passes` lists it)",
    )
    qr.add_argument("--limit", type=int, default=0, help="use at most N calibration batches (default 0: all)")
    qr.add_argument("--weight-scheme", choices=("uniform", "log"), help="override observe's weight-scheme")
    qr.add_argument("--weight-bits", type=int, help="override observe's weight-bits (log: 2 to 4)")
    qr.add_argument(
        "--compare-weights",
        choices=("uniform", "log"),
        help="add per-layer columns with each weight on these levels at the same bit width",
    )
    qr.add_argument(
        "--bf16", action="store_true", help="add per-layer columns: its error computed in bfloat16 (cast-bf16)"
    )
    qr.add_argument("--json", action="store_true", help="print the report as JSON")
    qr.set_defaults(func=cmd_quant_report)

    au = sub.add_parser(
        "auto", help="search per-layer compression under a budget; print the Pareto set (exit 3: budget unmet)"
    )
    _add_model_args(au, example_shape="1,1,28,28")
    au.add_argument("--calibration", required=True, metavar="DATA", help="a .npy/.npz directory or MODULE:FUNCTION")
    au.add_argument("--budget", required=True, help="accuracy>=0.99, latency<=4ms or size<=200KB")
    au.add_argument(
        "--held-out",
        metavar="DATA",
        help="held-out batches for the default evaluation (default: a quarter of --calibration)",
    )
    au.add_argument("--evaluate", metavar="MODULE:FUNCTION", help="a function graph -> float, higher is better")
    au.add_argument("--metric", choices=("cosine", "top1"), default="cosine", help="the default evaluation's measure")
    au.add_argument("--target", default="x86", help="target preset (default x86: the host)")
    au.add_argument("--threads", type=int, default=1, help="threads the timed kernels use (default 1)")
    au.add_argument(
        "--method", action="append", help="a per-layer method, e.g. int8, dynamic, prune=0.25+int8 (repeat)"
    )
    au.add_argument(
        "--weight-bits", type=int, action="append", help="int8 weight widths to try (repeat; default 8 and 4)"
    )
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--max-candidates", type=int, default=24, help="whole-model evaluations (default 24)")
    au.add_argument("--confirm", type=int, default=4, help="Pareto points compiled whole and timed (default 4)")
    au.add_argument(
        "--cache", metavar="DIR", help="cache directory (default FXPRESS_AUTO_CACHE or ~/.cache/fxpress/auto)"
    )
    au.add_argument("--out", metavar="DIR", help="write auto.json and auto_pareto.png here")
    au.add_argument("--json", action="store_true", help="print the result as JSON")
    au.set_defaults(func=cmd_auto)

    p = sub.add_parser("passes", help="list passes, their options, named pipelines and targets")
    p.set_defaults(func=cmd_passes)

    d = sub.add_parser("demo", help="train a digits CNN, compress, compile and compare (about a minute)")
    d.add_argument("-o", "--output", default="demo-artifact", help="artifact directory (default: demo-artifact)")
    d.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    d.add_argument("--threads", type=int, default=1, help="threads for both eager and compiled (default 1)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FxpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
