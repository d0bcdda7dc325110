"""all-MiniLM-L6-v2 with every FFN linear factorized to half its weights, fine-tuned back, compiled and timed.

    python examples/low_rank_minilm.py [--ratio 0.5] [--epochs 8] [--lr 1e-4] [--threads 1] [--rounds 20]

The 12 feed-forward linears (``intermediate.dense`` 384 -> 1536 and
``output.dense`` 1536 -> 384 of all 6 layers, 65 % of the model's linear
weights) go through ``low-rank{ratio=0.5}``: the truncated SVD of each, at the
largest multiple-of-16 rank whose two factors hold at most half its weights
(rank 144 of 384: 276,480 of 589,824 weights). The low-rank report is printed
first (each layer's weight error, its own output error and the model's, on 16
calibration sentences). The factorized graph is then fine-tuned (``fxpress.train.fine_tune``,
Adam, cosine schedule) on the 64 calibration sentences of
fxpress.models.sentences to match the fp32 model's embeddings (loss ``1 -
cosine``), and measured on the 336 held-out sentences: mean and worst cosine
to the fp32 embeddings, before and after fine-tuning, eager and compiled.

Speed: both graphs (the original and the fine-tuned factorized one) are
compiled the same way (fp32, ``x86``: this CPU's strongest ISA, fixed
``--threads``, no tuning records) and timed on one batch of 8 sentences x
``--seq-len`` tokens in interleaved rounds (each round runs both, the order
alternating), so load on the machine hits both alike; the speed-up is the
median of the per-round ratios. Seeded; writes a JSON file and a Markdown
table (examples/results/low_rank_minilm.{json,md}) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fxpress
from fxpress.models.minilm import sentence_encoder, tokenize
from fxpress.models.sentences import sentences
from fxpress.passes import LowRank
from fxpress.reports.low_rank_report import low_rank_report
from fxpress.runtime.cpu import host_cpu_model
from fxpress.train.fine_tune import fine_tune

FFN = r"bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense"


def cosine_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - torch.nn.functional.cosine_similarity(out, target)).mean()


def embed(run: Any, ids: torch.Tensor, mask: torch.Tensor, batch: int = 16) -> torch.Tensor:
    outs = []
    for i in range(0, len(ids), batch):
        outs.append(torch.as_tensor(np.asarray(run(ids[i : i + batch], mask[i : i + batch]))))
    return torch.cat(outs)


def cosines(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(ref, out)
    return {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4)}


def interleaved(modules: dict[str, Any], inputs: tuple[np.ndarray, ...], rounds: int) -> dict[str, Any]:
    """Median / min ms of each module over `rounds` interleaved rounds, and the median per-round time ratio."""
    names = list(modules)
    for m in modules.values():  # warm up
        for _ in range(3):
            m.run_numpy(*inputs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            modules[name].run_numpy(*inputs)
            times[name].append(time.perf_counter() - start)
    out: dict[str, Any] = {
        n: {"median_ms": round(statistics.median(t) * 1e3, 2), "min_ms": round(min(t) * 1e3, 2)}
        for n, t in times.items()
    }
    base, other = names
    out["speedup"] = round(statistics.median(a / b for a, b in zip(times[base], times[other], strict=True)), 3)
    return out


def run(
    *,
    ratio: float = 0.5,
    epochs: int = 8,
    lr: float = 1e-4,
    batch: int = 4,
    seq_len: int = 128,
    rank_multiple: int = 16,
    seed: int = 0,
    threads: int = 1,
    rounds: int = 20,
    calib_sentences: int | None = None,
    eval_sentences: int | None = None,
    compile: bool = True,
    data_aware: bool = True,
) -> dict[str, Any]:
    """Cosines to fp32 before and after fine-tuning, and compiled latency (the first N sentences of each split)."""
    torch.manual_seed(seed)
    encoder = sentence_encoder()
    calib, held_out = sentences("calib")[:calib_sentences], sentences("eval")[:eval_sentences]
    batches = [tokenize(calib[i : i + 8], seq_len) for i in range(0, len(calib), 8)]
    dynamic = ({0: torch.export.Dim("batch")}, {0: torch.export.Dim("batch")})
    graph = fxpress.capture(encoder, batches[0], dynamic_shapes=dynamic)
    plain = LowRank(ratio=ratio, layers=FFN, rank_multiple=rank_multiple)
    request = LowRank(ratio=ratio, layers=FFN, rank_multiple=rank_multiple, data=batches if data_aware else None)
    report = low_rank_report(graph, request, data=batches[:2])
    print(report)
    factored = fxpress.optimize(graph, [request])
    ids, mask = tokenize(held_out, seq_len)
    with torch.no_grad():
        ref = embed(encoder, ids, mask)
        train = [
            (i[k : k + batch], m[k : k + batch], encoder(i, m)[k : k + batch])
            for i, m in batches
            for k in range(0, len(i), batch)
        ]
    ffn = [r for r in report.rows if r.factorized]
    result: dict[str, Any] = {
        "cpu": host_cpu_model(),
        "threads": threads,
        "seq_len": seq_len,
        "sentences": [len(calib), len(held_out)],
        "layers": len(ffn),
        "ranks": sorted({r.rank[0] for r in ffn}),
        "ffn_weights": [sum(r.weights[0] for r in ffn), sum(r.weights[1] for r in ffn)],
        "model_params": [
            sum(p.numel() for p in graph.params().values()),
            sum(p.numel() for p in factored.params().values()),
        ],
        "mean_weight_error": round(statistics.mean(r.error or 0.0 for r in ffn), 4),
        "report_model_cosine": round(report.total_cosine or 0.0, 4),
        "plain_svd_before_fine_tune": cosines(ref, embed(fxpress.optimize(graph, [plain]), ids, mask)),
        "before_fine_tune": cosines(ref, embed(factored, ids, mask)),
    }
    print("held-out cosine before fine-tuning:", result["before_fine_tune"])
    losses: list[float] = []
    start = time.perf_counter()
    tuned = fine_tune(
        factored, train, epochs=epochs, lr=lr, loss=cosine_loss, schedule="cosine", progress=False, history=losses
    )
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    result["loss_per_epoch"] = [round(v, 6) for v in losses]
    result["after_fine_tune"] = cosines(ref, embed(tuned, ids, mask))
    print("held-out cosine after fine-tuning:", result["after_fine_tune"])
    if compile:
        dense_c = fxpress.compile(graph, target="x86", num_threads=threads, tuning=False)
        low_c = fxpress.compile(tuned, target="x86", num_threads=threads, tuning=False)
        result["after_fine_tune_compiled"] = cosines(ref, embed(low_c, ids, mask))
        x = tuple(t.numpy() for t in tokenize(held_out[:8], seq_len))
        result["latency_batch8"] = interleaved({"dense": dense_c, "low_rank": low_c}, x, rounds)
    result["options"] = {
        "ratio": ratio,
        "rank_multiple": rank_multiple,
        "epochs": epochs,
        "lr": lr,
        "batch": batch,
        "seed": seed,
        "rounds": rounds,
        "data_aware": data_aware,
    }
    return result


def table(r: dict[str, Any]) -> str:
    lat = r.get("latency_batch8")
    rows = [
        "| all-MiniLM-L6-v2, FFN linears low-rank | held-out cosine to fp32 (mean / min) |",
        "|---|---|",
        f"| plain SVD (ratio {r['options']['ratio']}, ranks {r['ranks']}), before fine-tuning "
        f"| {r['plain_svd_before_fine_tune']['mean']} / {r['plain_svd_before_fine_tune']['min']} |",
        f"| data-aware SVD{'' if r['options'].get('data_aware', True) else ' (not used)'}, before fine-tuning "
        f"| {r['before_fine_tune']['mean']} / {r['before_fine_tune']['min']} |",
        f"| after fine-tuning ({r['options']['epochs']} epochs on {r['sentences'][0]} sentences), eager "
        f"| {r['after_fine_tune']['mean']} / {r['after_fine_tune']['min']} |",
    ]
    if lat:
        c = r["after_fine_tune_compiled"]
        rows.append(f"| after fine-tuning, compiled (x86) | {c['mean']} / {c['min']} |")
    lines = [*rows, ""]
    lines.append(
        f"FFN weights {r['ffn_weights'][0]:,} -> {r['ffn_weights'][1]:,}; model parameters "
        f"{r['model_params'][0]:,} -> {r['model_params'][1]:,}."
    )
    if lat:
        lines += [
            "",
            f"| compiled fp32, x86, {r['threads']} thread(s), batch 8 x {r['seq_len']} tokens | median ms | min ms |",
            "|---|---|---|",
            f"| dense | {lat['dense']['median_ms']} | {lat['dense']['min_ms']} |",
            f"| low-rank FFN | {lat['low_rank']['median_ms']} | {lat['low_rank']['min_ms']} |",
            "",
            f"Speed-up (median of {r['options']['rounds']} interleaved rounds' ratios): {lat['speedup']}x "
            f"on {r['cpu']}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank-multiple", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads for training and for both compiled models")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip compiling and timing")
    parser.add_argument("--plain", action="store_true", help="plain SVD (no data-aware whitening) before fine-tuning")
    parser.add_argument("--out", type=Path, default=Path("examples/results/low_rank_minilm.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(
        ratio=args.ratio,
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        seq_len=args.seq_len,
        rank_multiple=args.rank_multiple,
        seed=args.seed,
        threads=args.threads,
        rounds=args.rounds,
        compile=not args.no_compile,
        data_aware=not args.plain,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(result) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
