"""Write a benchmark run as ``results.json`` (everything) and ``results.md`` (the tables).

Besides one row per contender, each (case, thread count) gets a comparison
(`comparisons`, also stored in ``results.json``): fxpress fp32 over ONNX
Runtime fp32 and over OpenVINO fp32, fxpress int8 over OpenVINO + NNCF int8
(medians; below 1 fxpress is faster), with both int8 builds' cosine to eager
fp32. The ISA table says which instruction set each fxpress and OpenVINO
build used, next to the machine's own flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.bench.machine import flags_summary, isa_summary

# the contenders whose medians `comparisons` records (as ``<name>_ms``, dashes as underscores)
CONTENDERS_COMPARED = (
    "eager",
    "fxpress",
    "ort",
    "openvino",
    "openvino-default",
    "fxpress-int8",
    "openvino-int8",
    "fxpress-int8-bf16",
    "fxpress-bf16",
)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _label(row: dict[str, Any]) -> str:
    """The contender's name; OpenVINO at its default precision also says which precision that was (bf16 on AMX)."""
    precision = row.get("info", {}).get("inference_precision")
    return (
        f"{row['contender']} ({precision})"
        if row["contender"] == "openvino-default" and precision
        else row["contender"]
    )


def _median(by: dict[str, dict[str, Any]], name: str) -> float | None:
    return by.get(name, {}).get("median_ms")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, threads): the medians of fxpress, ORT and OpenVINO (fp32 and int8) and their ratios.

    ``fxpress_vs_openvino`` = fxpress fp32 median / OpenVINO fp32 median;
    ``fxpress_int8_vs_openvino_int8`` = fxpress int8 / OpenVINO + NNCF int8;
    ``fxpress_vs_ort`` likewise. Below 1, fxpress is faster. A ratio is None
    where either contender is missing (not run, failed, not installed).
    """
    keyed: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in results:
        keyed.setdefault((r["model"], r["threads"]), {})[r["contender"]] = r
    out = []
    for (model, threads), by in keyed.items():
        ms = {name: _median(by, name) for name in CONTENDERS_COMPARED}
        out.append(
            {
                "model": model,
                "shape": next(iter(by.values()))["shape"],
                "threads": threads,
                **{f"{name.replace('-', '_')}_ms": v for name, v in ms.items()},
                "fxpress_vs_ort": _ratio(ms["fxpress"], ms["ort"]),
                "fxpress_vs_openvino": _ratio(ms["fxpress"], ms["openvino"]),
                "fxpress_int8_vs_openvino_int8": _ratio(ms["fxpress-int8"], ms["openvino-int8"]),
                "fxpress_int8_bf16_vs_openvino_int8": _ratio(ms["fxpress-int8-bf16"], ms["openvino-int8"]),
                "fxpress_bf16_vs_openvino_default": _ratio(ms["fxpress-bf16"], ms["openvino-default"]),
                "fxpress_int8_bf16_cosine": by.get("fxpress-int8-bf16", {}).get("info", {}).get("cosine_vs_eager"),
                "fxpress_int8_cosine": by.get("fxpress-int8", {}).get("info", {}).get("cosine_vs_eager"),
                "openvino_int8_cosine": by.get("openvino-int8", {}).get("info", {}).get("cosine_vs_eager"),
            }
        )
    return out


def _comparison_rows(comps: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | threads | fxpress ms | ORT ms | OpenVINO ms | fxpress / ORT | fxpress / OpenVINO | fxpress int8 ms "
        "| OpenVINO+NNCF int8 ms | fxpress int8 / OpenVINO int8 | cosine fxpress int8 | cosine OpenVINO int8 "
        "| fxpress int8+bf16 / OpenVINO int8 | cosine fxpress int8+bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comps:
        lines.append(
            f"| {c['model']} | {c['threads']} | {_fmt(c['fxpress_ms'], 3)} | {_fmt(c['ort_ms'], 3)} "
            f"| {_fmt(c['openvino_ms'], 3)} | {_fmt(c['fxpress_vs_ort'])} | {_fmt(c['fxpress_vs_openvino'])} "
            f"| {_fmt(c['fxpress_int8_ms'], 3)} | {_fmt(c['openvino_int8_ms'], 3)} "
            f"| {_fmt(c['fxpress_int8_vs_openvino_int8'])} | {_fmt(c['fxpress_int8_cosine'], 4)} "
            f"| {_fmt(c['openvino_int8_cosine'], 4)} | {_fmt(c.get('fxpress_int8_bf16_vs_openvino_int8'))} "
            f"| {_fmt(c.get('fxpress_int8_bf16_cosine'), 4)} |"
        )
    return lines


def _isa(info: dict[str, Any]) -> tuple[str, str]:
    """(ISA, where it was read) for one build's info: fxpress's manifest, or the kernels OpenVINO picked."""
    if isinstance(info.get("isa"), dict):  # fxpress: see contenders.fxpress_isa
        isa = info["isa"]
        mcpu = f"; LLVM mcpu {isa['mcpu']}" if isa.get("mcpu") and isa.get("source") != "target mcpu/requires" else ""
        return f"{isa.get('isa')}{mcpu}", str(isa.get("source"))
    if "kernel_isa" in info:  # OpenVINO: ISA words in the names of the kernels it chose, with counts
        kernels = ", ".join(f"{k} x{n}" for k, n in info["kernel_isa"].items())
        layers, precision = info.get("int8_layers", 0), info.get("inference_precision")
        return f"{kernels}; {layers} int8 conv/matmul layers, float precision {precision}", (
            "OpenVINO runtime model (primitiveType)"
        )
    return "", ""


def _isa_rows(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | threads | contender | ISA | from |", "|---|---|---|---|---|"]
    for r in results:
        isa, source = _isa(r.get("info", {}))
        if isa:
            lines.append(f"| {r['model']} | {r['threads']} | {_label(r)} | {isa} | {source} |")
    return lines


def _rows(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | shape | batch | threads | contender | median ms | ratio vs eager | CPU/wall | rounds | max abs diff "
        "| cosine vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['shape']} | {r['batch']} | {r['threads']} | {r['contender']} "
                f"| error | | | | {r['error'][:120].replace('|', '/')} | |"
            )
            continue
        diff = r.get("info", {}).get("max_abs_diff_vs_eager")
        cos = r.get("info", {}).get("cosine_vs_eager")
        lines.append(
            f"| {r['model']} | {r['shape']} | {r['batch']} | {r['threads']} | {_label(r)} "
            f"| {_fmt(r.get('median_ms'), 3)} | {_fmt(r.get('ratio_vs_eager'))} | {_fmt(r.get('cpu_per_wall'))} "
            f"| {r.get('rounds', 0)} | {'' if diff is None else f'{diff:.1e}'} | {_fmt(cos, 4)} |"
        )
    return lines


def _builds(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | threads | capture s | optimize s | compile s | ONNX export s (exporter) | OpenVINO compile s "
        "| NNCF quantize s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keyed: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        keyed.setdefault((r["model"], r["threads"]), {})[r["contender"]] = r.get("info", {})
    for (model, threads), by in keyed.items():
        fx, ov, ov8 = by.get("fxpress", {}), by.get("openvino", {}), by.get("openvino-int8", {})
        onnx = next(
            (by[n] for n in ("ort", "openvino", "openvino-int8", "ort-int8") if "exporter" in by.get(n, {})), {}
        )
        export = f"{_fmt(onnx.get('export_s'))} ({onnx['exporter']})" if onnx else ""
        lines.append(
            f"| {model} | {threads} | {_fmt(fx.get('capture_s'))} | {_fmt(fx.get('optimize_s'))} "
            f"| {_fmt(fx.get('compile_s'))} | {export} | {_fmt(ov.get('compile_model_s'))} "
            f"| {_fmt(ov8.get('quantize_s'))} |"
        )
    return lines


def _build_isas(results: list[dict[str, Any]]) -> str:
    """The distinct ISAs of the fxpress builds in `results` (usually one), for the machine line."""
    isas = sorted({_isa(r["info"])[0] for r in results if r["contender"].startswith("fxpress") and "info" in r} - {""})
    return ", ".join(isas) or "none built"


def markdown(run: dict[str, Any]) -> str:
    """The run as Markdown: header (machine, ISA, method), the per-contender table, comparisons, ISA, build times."""
    m, cfg = run["machine"], run["config"]
    out = [
        f"# fxpress benchmark{' (quick smoke run: small shapes, few rounds)' if cfg.get('quick') else ''}",
        "",
        f"- when: {run['started']} ({run['wall_s']:.0f} s); git {m.get('git')}",
        f"- machine: {m.get('cpu_model')} (LLVM: {m.get('llvm_cpu')}), {m.get('affinity_cpus')} usable of "
        f"{m.get('logical_cpus')} logical CPUs, {m.get('mem_gib')} GiB; flags: {flags_summary(m)}",
        f"- ISA: {isa_summary(m)} (/proc/cpuinfo); fxpress builds: {_build_isas(run['results'])} "
        "(per build: the ISA table below)",
        f"- load average at start / end: {run['loadavg_start']} / {run['loadavg_end']}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in m['packages'].items() if v)}",
        f"- method: {cfg['warmup']} warm-up calls, then {cfg['rounds']} interleaved rounds (order rotating, "
        f"{cfg['gap_ms']} ms apart); a slow contender joins fewer rounds, about {cfg['budget_s']} s of calls "
        f"(at least {cfg['min_rounds']}); medians. CPU/wall = process CPU seconds per wall second during the "
        "contender's own calls (≈ the cores it obtained). Ratio = median / eager median (> 1 is slower). "
        "Idle worker threads stop spinning soon after a call (ONNX Runtime: session.force_spinning_stop; "
        "TVM: 10000 polls), so one contender's pool does not take the cores of the next.",
        f"- MiniLM attention implementation: {cfg['attn']}; fxpress pipeline: default (`fxpress-bf16`: "
        "default,cast-bf16, every linear in bfloat16 with float32 sums); target x86",
        "- OpenVINO: the ORT contender's ONNX file, CPU plugin, INFERENCE_NUM_THREADS = threads, LATENCY hint, "
        "one synchronous infer request; `openvino` and `openvino-int8` with INFERENCE_PRECISION_HINT f32, "
        "`openvino-default` at the plugin's default precision (named in brackets: bf16 on AMX). "
        "`openvino-int8`: nncf.quantize, default preset, the case's calibration batches "
        "(ModelType.TRANSFORMER for MiniLM).",
        "",
        *_rows(run["results"]),
        "",
        "## fxpress vs ONNX Runtime and OpenVINO",
        "",
        "Ratio = fxpress median / the other's median at the same threads (< 1: fxpress is faster); "
        "cosine = mean cosine of the int8 output rows to eager fp32.",
        "",
        *_comparison_rows(run.get("comparisons") or comparisons(run["results"])),
        "",
        "## ISA per build",
        "",
        *_isa_rows(run["results"]),
        "",
        "## Build times",
        "",
        *_builds(run["results"]),
    ]
    if run["notes"]:
        out += ["", "## Notes", "", *[f"- {n}" for n in run["notes"]]]
    return "\n".join(out) + "\n"


def write(run: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into `out_dir` (created); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "results.json", out_dir / "results.md"
    js.write_text(json.dumps(run, indent=1, default=str) + "\n")
    md.write_text(markdown(run))
    return js, md
