"""The benchmark's command line: ``python -m tools.bench`` or ``python tools/bench/run.py``.

For each model case and thread count: build every contender that applies
to the case (eager, fxpress, ort, openvino, and the int8 ones where the case
has calibration data; see `tools.bench.contenders`) at that thread count,
warm them up, run interleaved rounds (see `tools.bench.measure`), and add one
row per contender. Errors while building or running a contender become rows
with an ``error``; an unavailable model, or a contender whose package is not
installed, becomes a note. Writes ``results.json`` and ``results.md`` under
``--out-dir`` (``bench/`` at the repo root; ``bench/quick/`` with
``--quick``), with the fxpress / ORT / OpenVINO ratios per case and thread
count (`tools.bench.report.comparisons`).

``--quick`` is a smoke test that finishes in a few minutes on 2 cores:
threads 1, 3 rounds, 1 warm-up, ResNet and EfficientNet at 64x64 and MiniLM
at sequence length 32. Any option given explicitly overrides the quick value.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from tools.bench import contenders as ct
from tools.bench import report
from tools.bench.cases import CASE_NAMES, Case, CaseUnavailable, make_cases
from tools.bench.machine import machine_info
from tools.bench.measure import interleave, plan_rounds, warm_up

log = logging.getLogger("tools.bench")
REPO = Path(__file__).resolve().parents[2]

# option -> (full default, --quick default)
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "models": (",".join(CASE_NAMES), ",".join(CASE_NAMES)),
    "threads": ("1,2", "1"),
    "rounds": (40, 3),
    "warmup": (3, 1),
    "budget_s": (60.0, 5.0),
    "min_rounds": (3, 1),
    "image_size": (224, 64),
    "seq_len": (128, 32),
    "out_dir": (REPO / "bench", REPO / "bench" / "quick"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--models", help=f"comma-separated cases from {', '.join(CASE_NAMES)} (default: all)")
    p.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    p.add_argument(
        "--contenders", default=",".join(ct.CONTENDERS), help=f"comma-separated, from {','.join(ct.CONTENDERS)}"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 40)")
    p.add_argument("--warmup", type=int, help="warm-up calls per contender (default 3)")
    p.add_argument("--budget-s", type=float, help="seconds of timed calls a slow contender gets per case (default 60)")
    p.add_argument("--min-rounds", type=int, help="rounds even a slow contender joins (default 3)")
    p.add_argument("--slow-s", type=float, default=2.0, help="a warm-up call longer than this ends warm-up")
    p.add_argument("--gap-ms", type=float, default=20.0, help="sleep between calls, so spinning threads settle")
    p.add_argument("--image-size", type=int, help="ResNet / EfficientNet input height and width (default 224)")
    p.add_argument("--seq-len", type=int, help="MiniLM sequence length (default 128)")
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"], help="MiniLM attention implementation")
    p.add_argument("--out-dir", type=Path, help="where results.json and results.md go (default bench/)")
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, threads 1, 3 rounds")
    args = p.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.threads = [int(t) for t in str(args.threads).split(",")]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [m for m in args.models if m not in CASE_NAMES] + [c for c in args.contenders if c not in ct.CONTENDERS]
    if unknown:
        p.error(f"unknown model or contender: {', '.join(unknown)}")
    return args


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _row(case: Case, threads: int, contender: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": case.name,
        "shape": case.shape,
        "batch": case.batch,
        "threads": threads,
        "contender": contender,
        **fields,
    }


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _build(
    name: str,
    case: Case,
    model: torch.nn.Module,
    inputs: tuple,
    threads: int,
    ref: np.ndarray,
    onnx: tuple[Path, dict] | None,
) -> ct.Contender:
    if name == "eager":
        return ct.build_eager(model, inputs, threads, ref)
    if name in ("fxpress", "fxpress-bf16"):
        return ct.build_fxpress(model, inputs, threads, ref, bf16=name == "fxpress-bf16")
    if name in ("fxpress-int8", "fxpress-int8-bf16"):
        assert case.calibration is not None
        bf16 = name == "fxpress-int8-bf16"
        return ct.build_fxpress_int8(model, inputs, threads, ref, case.calibration(), case.dynamic, bf16)
    if name == "torch-int8":
        return ct.build_torch_int8(model, inputs, threads, ref)
    if name == "fxpress-torch-compile":
        return ct.build_torch_compile(model, inputs, threads, ref)
    if name == "fxpress-torch-compile-int8":
        assert case.calibration is not None
        return ct.build_torch_compile(model, inputs, threads, ref, case.calibration(), case.dynamic)
    if onnx is None:
        raise RuntimeError("no ONNX model (export failed: see the notes)")
    if name in ("openvino", "openvino-default"):
        return ct.build_openvino(name, onnx[0], inputs, threads, ref, onnx[1])
    if name == "openvino-int8":
        assert case.calibration is not None
        transformer = case.family == "minilm"
        return ct.build_openvino_int8(onnx[0], inputs, threads, ref, onnx[1], case.calibration(), transformer)
    if name == "ort-int8":
        return ct.build_ort(ct.quantize_onnx(onnx[0]), inputs, threads, ref, onnx[1])
    return ct.build_ort(onnx[0], inputs, threads, ref, onnx[1])


def bench_threads(
    case: Case,
    model: torch.nn.Module,
    inputs: tuple,
    ref: np.ndarray,
    threads: int,
    onnx: Any,
    args: argparse.Namespace,
    names: list[str],
) -> list[dict[str, Any]]:
    """Rows for one case at one thread count: build `names`, warm up, interleave, summarise."""
    torch.set_num_threads(threads)
    rows, built = [], []
    for name in names:
        log.info("%s threads=%d: building %s", case.name, threads, name)
        try:
            built.append(_build(name, case, model, inputs, threads, ref, onnx))
        except Exception as exc:
            log.warning("%s threads=%d: %s failed to build: %s", case.name, threads, name, _error(exc))
            rows.append(_row(case, threads, name, error=_error(exc)))
    warm_ms: dict[str, float] = {}
    rounds: dict[str, int] = {}
    for c in built:
        call_s = warm_up(c.call, args.warmup, args.slow_s)
        warm_ms[c.name] = call_s * 1e3
        rounds[c.name] = plan_rounds(args.rounds, call_s, args.budget_s, args.min_rounds)
    log.info(
        "%s threads=%d: rounds %s (warm call ms %s)",
        case.name,
        threads,
        rounds,
        {k: round(v, 2) for k, v in warm_ms.items()},
    )
    load_before = _loadavg()
    samples = interleave([(c.name, c.call) for c in built], rounds, args.rounds, args.gap_ms / 1e3)
    load_after = _loadavg()
    for c in built:
        summary = samples[c.name].summary()
        rows.append(_row(case, threads, c.name, **summary, warm_call_ms=round(warm_ms[c.name], 3), info=c.info,
                         loadavg=[load_before, load_after]))  # fmt: skip
    eager = next((r for r in rows if r["contender"] == "eager" and "median_ms" in r), None)
    for r in rows:
        if eager and "median_ms" in r:
            r["ratio_vs_eager"] = r["median_ms"] / eager["median_ms"]
    return rows


def bench_case(case: Case, args: argparse.Namespace, tmp: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Rows for one case at every thread count; an unavailable model becomes a note."""
    try:
        model, inputs = case.load()
    except CaseUnavailable as exc:
        notes.append(f"{case.name}: skipped: {exc}")
        return []
    with torch.inference_mode():
        ref = ct.first_output(model(*inputs)).astype(np.float64)
    names = []
    for name in args.contenders:
        if not ct.applies(name, case.family, case.calibration is not None):
            continue  # int8 only with calibration data; the dynamic int8 baselines on MiniLM only
        missing = ct.missing_packages(name)
        if missing:
            note = f"{name}: skipped: {', '.join(missing)} not installed ({ct.install_hint(missing)})"
            if note not in notes:
                notes.append(note)
            continue
        names.append(name)
    onnx = None
    if any(n in ct.ONNX_BASED for n in names):
        path = tmp / f"{case.name}.onnx"
        try:
            onnx = (path, ct.export_onnx(model, inputs, path))
            if onnx[1]["export_errors"]:
                notes.append(f"{case.name}: ONNX export fell back to {onnx[1]['exporter']}: {onnx[1]['export_errors']}")
        except Exception as exc:
            notes.append(f"{case.name}: ONNX export failed: {_error(exc)}")
    rows = []
    for threads in args.threads:
        rows += bench_threads(case, model, inputs, ref, threads, onnx, args, names)
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    machine = machine_info()  # before anything runs: TVM's pool changes the CPU affinity
    cases = make_cases(image_size=args.image_size, seq_len=args.seq_len, attn=args.attn)
    started, t0, load_start = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter(), _loadavg()
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fxpress-bench-") as tmp:
        for name in args.models:
            results += bench_case(cases[name], args, Path(tmp), notes)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    run = {
        "started": started,
        "wall_s": time.perf_counter() - t0,
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "machine": machine,
        "config": config,
        "results": results,
        "comparisons": report.comparisons(results),
        "notes": notes,
    }
    js, md = report.write(run, Path(args.out_dir))
    print(md.read_text())
    log.info("wrote %s and %s", js, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
