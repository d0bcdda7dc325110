"""Channel pruning plus fine-tuning on scikit-learn's digits: accuracy before and after, parameter counts.

    python examples/prune_digits.py [--ratio 0.5] [--importance taylor] [--tune-epochs 12]

Trains fxpress's `DigitsCNN` (the demo's model and data: 8x8 digits, nothing
downloaded), captures it with a dynamic batch, runs
``fold-bn,prune-channels{ratio=0.5,importance=taylor}`` (Taylor importance
ranks channels by the loss gradient on the training batches; ``l1`` needs no
data) and fine-tunes the pruned graph on the training split with
`fxpress.train.fine_tune` (Adam, cosine-decayed learning rate), then prints
the held-out accuracy of the unpruned, pruned and fine-tuned graphs and their
parameter counts. Deterministic (seeded). tests/test_prune_accuracy.py runs
`run` and holds the fine-tuned accuracy to within 1 point of the unpruned one.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import fxpress
from fxpress.demo import Digits, load_digits, train
from fxpress.passes.prune import PruneChannels
from fxpress.train import ShuffledBatches, fine_tune


def accuracy(graph: fxpress.Graph, data: Digits) -> float:
    return float((graph(data.x_test).argmax(1) == data.y_test).float().mean())


def parameters(graph: fxpress.Graph) -> int:
    return sum(p.numel() for p in graph.gm.parameters())


def run(
    *,
    ratio: float = 0.5,
    importance: str = "taylor",
    train_epochs: int = 15,
    tune_epochs: int = 12,
    lr: float = 3e-3,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train, prune, fine-tune; return (and print) accuracies and parameter counts."""
    torch.manual_seed(0)
    data = load_digits()
    model = train(data, epochs=train_epochs, progress=verbose)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dense = fxpress.optimize(fxpress.capture(model, (data.x_test[:8],), dynamic_shapes=({0: batch},)), "fold-bn")
    batches = list(ShuffledBatches(data.x_train, data.y_train, batch=128))  # for taylor: (inputs, target) tuples
    prune = PruneChannels(ratio=ratio, importance=importance, data=batches if importance == "taylor" else None)
    pruned = fxpress.optimize(dense, prune)
    train_batches = ShuffledBatches(data.x_train, data.y_train, seed=1)
    tuned = fine_tune(pruned, train_batches, epochs=tune_epochs, lr=lr, schedule="cosine", progress=verbose)
    rows = {
        "unpruned": (accuracy(dense, data), parameters(dense)),
        f"pruned {ratio:.0%}": (accuracy(pruned, data), parameters(pruned)),
        f"pruned {ratio:.0%} + fine-tuned": (accuracy(tuned, data), parameters(tuned)),
    }
    if verbose:
        print(f"{'':28}{'test accuracy':>15}{'parameters':>12}")
        for name, (acc, count) in rows.items():
            print(f"{name:28}{acc * 100:>14.2f}%{count:>12,}")
    return {"rows": rows, "dense": dense, "pruned": pruned, "tuned": tuned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--importance", default="taylor", choices=["taylor", "l1", "l2"])
    parser.add_argument("--tune-epochs", type=int, default=12)
    args = parser.parse_args()
    run(ratio=args.ratio, importance=args.importance, tune_epochs=args.tune_epochs)


if __name__ == "__main__":
    main()
