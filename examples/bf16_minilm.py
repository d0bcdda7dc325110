"""bf16 for the layers int8 leaves in float: all-MiniLM-L6-v2 with cast-bf16, what quant-report says and what it costs.

    python examples/bf16_minilm.py [--batch 1] [--rounds 5] [--report-batches 2]

1. ``quant-report --bf16`` of the hand int8 recipe (observe per-channel, the
   six FFN down-projections dynamic): per linear, int8 and bf16 error side by
   side (the bf16 columns: that layer alone in bfloat16, the rest float).
2. Four builds, each compiled for this CPU (1 thread, batch `--batch` x 128
   tokens) and compared with fp32 eager on the 336 held-out bundled sentences
   (mean / min cosine), timed interleaved (median ms, CPU seconds per wall
   second each obtained): fp32; the hand int8 recipe; the same with the six
   FFN down-projections in bf16 instead of dynamic int8 (``observe{skip=..}``,
   ``fold-qdq``, ``cast-bf16{layers=..}``); every linear in bf16
   (``cast-bf16``), the rest fp32.

Writes examples/results/bf16_minilm.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fxpress
from fxpress.models.minilm import sentence_encoder, tokenize
from fxpress.models.sentences import sentences
from fxpress.passes import Calibrate, CastBf16, FoldQDQ, Observe
from fxpress.reports.quant_report import quant_report

FFN_OUT = r"layer\.\d+\.output\.dense"  # the six FFN down-projections (examples/quantize_minilm.py)
RESULTS = Path(__file__).parent / "results"


def builds(data: list[Any]) -> dict[str, list[Any]]:
    return {
        "fp32": [],
        "int8 recipe (FFN down dynamic)": [
            Observe(per_channel=True, dynamic=(FFN_OUT,)),
            Calibrate(data=data),
            FoldQDQ(),
        ],
        "int8 + FFN down bf16": [
            Observe(per_channel=True, skip=(FFN_OUT,)),
            Calibrate(data=data),
            FoldQDQ(),
            CastBf16(layers=(FFN_OUT,)),
        ],
        "every linear bf16": [CastBf16()],
    }


def _time(call: Any, args: tuple[np.ndarray, ...], calls: int) -> tuple[float, float]:
    call(*args)
    times = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        call(*args)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3, (time.process_time() - c0) / (time.perf_counter() - w0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report-batches", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = sentence_encoder()
    calib, held_out = sentences("calib"), sentences("eval")
    report_data = [tokenize(calib[i : i + 8], 64) for i in range(0, 8 * args.report_batches, 8)]
    report = quant_report(
        encoder,
        report_data,
        passes=[Observe(per_channel=True, dynamic=(FFN_OUT,)), Calibrate(), FoldQDQ()],
        bf16=True,
    )
    print(report.text(), flush=True)
    calib_batches = [tokenize(calib[i : i + args.batch], 128) for i in range(0, len(calib), args.batch)]
    graph = fxpress.capture(encoder, calib_batches[0])
    ids, mask = tokenize(held_out, 128)
    with torch.no_grad():
        ref = torch.cat([encoder(ids[i : i + 16], mask[i : i + 16]) for i in range(0, len(held_out), 16)])
    compiled, rows = {}, {}
    for name, passes in builds(calib_batches).items():
        optimized = fxpress.optimize(graph, passes) if passes else graph
        module = fxpress.compile(optimized, target="x86", num_threads=1, tuning=False)
        compiled[name] = module
        outs = []
        for i in range(0, len(held_out) - args.batch + 1, args.batch):
            outs.append(torch.as_tensor(np.asarray(module(ids[i : i + args.batch], mask[i : i + args.batch]))))
        cos = torch.nn.functional.cosine_similarity(ref[: len(outs) * args.batch], torch.cat(outs))
        rows[name] = {
            "pipeline": ",".join(p.text() for p in passes) or "(none)",
            "cosine_mean": round(float(cos.mean()), 5),
            "cosine_min": round(float(cos.min()), 5),
            "isa": module.manifest["target"].get("isa"),
            "ms": [],
            "cpu_per_wall": [],
        }
        print(name, rows[name]["cosine_mean"], rows[name]["cosine_min"], flush=True)
    x = tuple(t.numpy() for t in tokenize(held_out[: args.batch], 128))
    calls = 10 if args.batch == 1 else 4
    for r in range(args.rounds):
        order = list(compiled)[r % len(compiled) :] + list(compiled)[: r % len(compiled)]
        for name in order:
            ms, cpu = _time(compiled[name], x, calls)
            rows[name]["ms"].append(round(ms, 2))
            rows[name]["cpu_per_wall"].append(round(cpu, 2))
    base = float(np.median(rows["fp32"]["ms"]))
    for row in rows.values():
        row["median_ms"] = round(float(np.median(row["ms"])), 2)
        row["vs_fp32"] = round(row["median_ms"] / base, 3)
    cpu_name = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    out = {
        "cpu": cpu_name,
        "batch": args.batch,
        "seq_len": 128,
        "threads": 1,
        "builds": rows,
        "quant_report": report.to_json(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16_minilm.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        f"# bf16 on all-MiniLM-L6-v2 (`python examples/bf16_minilm.py --batch {args.batch}`)",
        "",
        f"CPU: {cpu_name}, 1 thread, batch {args.batch} x 128 tokens; cosine to fp32 eager on "
        f"{len(held_out)} held-out sentences; {args.rounds} interleaved rounds of {calls} calls (median ms; "
        "CPU/wall = CPU seconds per wall second each build obtained).",
        "",
        "| build | pipeline | ISA | cosine mean | cosine min | median ms | vs fp32 | CPU/wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cpu = f"{min(row['cpu_per_wall']):.2f}-{max(row['cpu_per_wall']):.2f}"
        lines.append(
            f"| {name} | `{row['pipeline']}` | {row['isa']} | {row['cosine_mean']:.4f} | {row['cosine_min']:.4f} "
            f"| {row['median_ms']:.2f} | {row['vs_fp32']:.2f} | {cpu} |"
        )
    lines += ["", "## quant-report --bf16 (the int8 recipe; bf16 columns: that layer alone in bfloat16)", "", "```"]
    lines += [report.text(), "```", ""]
    (RESULTS / "bf16_minilm.md").write_text("\n".join(lines))
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
