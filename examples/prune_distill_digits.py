"""Prune, then distil to recover: the digits CNN with half its channels pruned, fine-tuned with and without its
unpruned self as the teacher, on the same budget.

    python examples/prune_distill_digits.py [--seeds 0 1 2 3 4] [--temperature 8]
    python examples/prune_distill_digits.py --holdout   # choose settings on 300 held-out training images

For every seed: trains fxpress's `DigitsCNN` on scikit-learn's digits
(`fxpress.demo`, nothing downloaded; the seed sets its initialization and
data order), captures it with a dynamic batch, runs
``fold-bn,prune-channels{ratio=0.5}`` (l1 importance: half of every
prunable channel group goes, 38,282 -> 9,802 parameters), then recovers the
pruned graph two ways on the same budget: the same epochs over the same
labelled images in the same seeded order, Adam at the same cosine-decayed
learning rate:

- **fine-tune**: cross-entropy on the labels (`fxpress.train.fine_tune`);
- **distil**: ``0.1 * CE + 0.9 * T^2 * KL`` against the unpruned graph at
  T = 8 (`fxpress.train.distil`, the ``distil`` pass's trainer).

Two budgets: 100 labelled images for 30 epochs (recovery when little of the
labelled data is at hand), and all 1,347 training images for 20 epochs. It
prints and writes (examples/results/prune_distill_digits.json and .md) the
held-out accuracy (the 450 images `load_digits` holds out) of the unpruned,
pruned, fine-tuned and distilled graphs per seed, their means, and how much
of the accuracy pruning lost each recovers. The settings (T = 8 among 2, 4,
8; alpha; the budgets) were chosen with ``--holdout`` (everything trains on
1,047 of the training images and is evaluated on the other 300), not on the
split the tables report. One thread by default (a shared 2-core machine
stalls two). tests/test_distil_examples.py runs a small version of `run`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import fxpress
from fxpress.demo import Digits, load_digits, train
from fxpress.train import ShuffledBatches, distil, fine_tune

OUT = Path(__file__).parent / "results" / "prune_distill_digits"
HOLDOUT = 300
STAGES = ("unpruned", "pruned", "fine-tuned", "distilled")
Budget = tuple[int | None, int]  # (labelled images for the recovery, None: all of them; epochs)


def accuracy(graph: fxpress.Graph, data: Digits) -> float:
    return float((graph(data.x_test).argmax(1) == data.y_test).float().mean())


def parameters(graph: fxpress.Graph) -> int:
    return sum(p.numel() for p in graph.gm.parameters())


def one_seed(
    data: Digits, seed: int, budgets: Sequence[Budget], settings: dict[str, Any]
) -> tuple[list[dict[str, float]], dict[str, int]]:
    """Accuracy of every stage under every budget, and the parameter counts, for one seed."""
    model = train(data, epochs=settings["train_epochs"], seed=seed)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dense = fxpress.optimize(fxpress.capture(model, (data.x_test[:8],), dynamic_shapes=({0: batch},)), "fold-bn")
    pruned = fxpress.optimize(dense, f"prune-channels{{ratio={settings['ratio']}}}")
    kd = {"temperature": settings["temperature"], "alpha": settings["alpha"], "seed": seed}
    out = []
    for images, epochs in budgets:
        x, y = data.x_train[:images], data.y_train[:images]
        budget = {"epochs": epochs, "lr": settings["lr"], "schedule": "cosine", "progress": False}
        tuned = fine_tune(pruned, ShuffledBatches(x, y, seed=seed), **budget)
        distilled = distil(pruned, dense, ShuffledBatches(x, y, seed=seed), **budget, **kd)
        graphs = dict(zip(STAGES, (dense, pruned, tuned, distilled), strict=True))
        out.append({k: accuracy(g, data) for k, g in graphs.items()})
    return out, {"unpruned": parameters(dense), "pruned": parameters(pruned)}


def run(
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    budgets: Sequence[Budget] = ((100, 30), (None, 20)),
    ratio: float = 0.5,
    train_epochs: int = 15,
    lr: float = 3e-3,
    temperature: float = 8.0,
    alpha: float = 0.9,
    holdout: bool = False,
    threads: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train, prune and recover both ways for every seed and budget; return (and print) the accuracies."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    data = load_digits()
    if holdout:  # the last 300 training images stand in for the held-out split
        x, y = data.x_train, data.y_train
        data = Digits(x[:-HOLDOUT], y[:-HOLDOUT], x[-HOLDOUT:], y[-HOLDOUT:])
    settings = {"ratio": ratio, "train_epochs": train_epochs, "lr": lr, "temperature": temperature, "alpha": alpha}
    per_seed: dict[int, list[dict[str, float]]] = {}
    counts: dict[str, int] = {}
    for seed in seeds:
        per_seed[seed], counts = one_seed(data, seed, budgets, settings)
        if verbose:
            for (images, epochs), accs in zip(budgets, per_seed[seed], strict=True):
                shown = ", ".join(f"{k} {v * 100:.2f} %" for k, v in accs.items())
                print(f"  seed {seed}, {images or 'all'} images x {epochs} epochs: {shown}", flush=True)
    result: dict[str, Any] = {
        "settings": {
            "data": f"scikit-learn digits (8x8), {len(data.y_train):,} training / {len(data.y_test)} held-out images",
            "model": "fxpress.demo.DigitsCNN",
            "pipeline": f"fold-bn,prune-channels{{ratio={ratio}}}",
            "seeds": list(seeds),
            **settings,
            "optimizer": "adam, cosine lr; the same images, order and budget for both",
            "threads": threads,
        },
        "parameters": counts,
        "budgets": [
            _summary(images or len(data.y_train), epochs, {s: a[i] for s, a in per_seed.items()})
            for i, (images, epochs) in enumerate(budgets)
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }
    if verbose:
        print(markdown(result))
    return result


def _summary(images: int, epochs: int, per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    mean = {stage: statistics.fmean(a[stage] for a in per_seed.values()) * 100 for stage in STAGES}
    lost = mean["unpruned"] - mean["pruned"]
    return {
        "images": images,
        "epochs": epochs,
        "accuracy": {str(s): {k: round(v * 100, 2) for k, v in a.items()} for s, a in per_seed.items()},
        "mean": {k: round(v, 3) for k, v in mean.items()},
        "recovered_of_lost": {
            k: round((mean[k] - mean["pruned"]) / lost, 3) if lost > 0 else None for k in ("fine-tuned", "distilled")
        },
        "distilled_above_fine_tuned": sum(a["distilled"] > a["fine-tuned"] for a in per_seed.values()),
        "ties": sum(a["distilled"] == a["fine-tuned"] for a in per_seed.values()),
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables, one per budget (what the README shows)."""
    s, counts = result["settings"], result["parameters"]
    lines = [
        f"`{s['pipeline']}` on the digits CNN ({counts['unpruned']:,} -> {counts['pruned']:,} parameters), then "
        f"recovered without and with the unpruned graph as teacher (T = {s['temperature']:g}, alpha = "
        f"{s['alpha']:g}; Adam, lr {s['lr']:g}, cosine); accuracy % on {s['data'].split(', ')[1]}.",
    ]
    for b in result["budgets"]:
        seeds = list(b["accuracy"])
        lines += [
            "",
            f"{b['images']:,} labelled images, {b['epochs']} epochs:",
            "",
            "| | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | recovered of what pruning lost |",
            "|---|" + "---:|" * (len(seeds) + 2),
        ]
        for stage in STAGES:
            cells = " | ".join(f"{b['accuracy'][k][stage]:.2f}" for k in seeds)
            recovered = b["recovered_of_lost"].get(stage)
            rec = f"{recovered * 100:.0f} %" if recovered is not None else ""
            lines.append(f"| {stage} | {cells} | {b['mean'][stage]:.2f} | {rec} |")
        wins, ties = b["distilled_above_fine_tuned"], b["ties"]
        lines += ["", f"Distilled above fine-tuned on {wins} of {len(seeds)} seeds ({ties} tied)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=8.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--holdout", action="store_true", help="evaluate on 300 held-out training images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="where to write <out>.json and <out>.md")
    args = parser.parse_args()
    result = run(
        seeds=args.seeds,
        ratio=args.ratio,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        holdout=args.holdout,
        threads=args.threads,
    )
    if args.holdout:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
