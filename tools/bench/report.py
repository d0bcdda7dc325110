"""Write a benchmark run as ``results.json`` (everything) and ``results.md`` (the table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.bench.machine import flags_summary


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


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
            f"| {r['model']} | {r['shape']} | {r['batch']} | {r['threads']} | {r['contender']} "
            f"| {_fmt(r.get('median_ms'), 3)} | {_fmt(r.get('ratio_vs_eager'))} | {_fmt(r.get('cpu_per_wall'))} "
            f"| {r.get('rounds', 0)} | {'' if diff is None else f'{diff:.1e}'} | {_fmt(cos, 4)} |"
        )
    return lines


def _builds(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | threads | capture s | optimize s | compile s | ONNX export s (exporter) |",
        "|---|---|---|---|---|---|",
    ]
    keyed: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        keyed.setdefault((r["model"], r["threads"]), {})[r["contender"]] = r.get("info", {})
    for (model, threads), by in keyed.items():
        fx, ort = by.get("fxpress", {}), by.get("ort", {})
        export = f"{_fmt(ort.get('export_s'))} ({ort['exporter']})" if "exporter" in ort else ""
        lines.append(
            f"| {model} | {threads} | {_fmt(fx.get('capture_s'))} | {_fmt(fx.get('optimize_s'))} "
            f"| {_fmt(fx.get('compile_s'))} | {export} |"
        )
    return lines


def markdown(run: dict[str, Any]) -> str:
    m, cfg = run["machine"], run["config"]
    out = [
        f"# fxpress benchmark{' (quick smoke run: small shapes, few rounds)' if cfg.get('quick') else ''}",
        "",
        f"- when: {run['started']} ({run['wall_s']:.0f} s); git {m.get('git')}",
        f"- machine: {m.get('cpu_model')} (LLVM: {m.get('llvm_cpu')}), {m.get('affinity_cpus')} usable of "
        f"{m.get('logical_cpus')} logical CPUs, {m.get('mem_gib')} GiB; flags: {flags_summary(m)}",
        f"- load average at start / end: {run['loadavg_start']} / {run['loadavg_end']}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in m['packages'].items() if v)}",
        f"- method: {cfg['warmup']} warm-up calls, then {cfg['rounds']} interleaved rounds (order rotating, "
        f"{cfg['gap_ms']} ms apart); a slow contender joins fewer rounds, about {cfg['budget_s']} s of calls "
        f"(at least {cfg['min_rounds']}); medians. CPU/wall = process CPU seconds per wall second during the "
        "contender's own calls (≈ the cores it obtained). Ratio = median / eager median (> 1 is slower). "
        "Idle worker threads stop spinning soon after a call (ONNX Runtime: session.force_spinning_stop; "
        "TVM: 10000 polls), so one contender's pool does not take the cores of the next.",
        f"- MiniLM attention implementation: {cfg['attn']}; fxpress pipeline: default; target x86",
        "",
        *_rows(run["results"]),
        "",
        "## Build times",
        "",
        *_builds(run["results"]),
    ]
    if run["notes"]:
        out += ["", "## Notes", "", *[f"- {n}" for n in run["notes"]]]
    return "\n".join(out) + "\n"


def write(run: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "results.json", out_dir / "results.md"
    js.write_text(json.dumps(run, indent=1, default=str) + "\n")
    md.write_text(markdown(run))
    return js, md
