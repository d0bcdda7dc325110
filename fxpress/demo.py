"""`fxpress demo`: the whole flow on a bundled default, in about a minute: a CNN made smaller and faster.

1. trains a small CNN with BatchNorm on scikit-learn's bundled digits (8x8
   grey images, 1797 samples; nothing is downloaded) for a fixed number of
   epochs (a few seconds; deterministic, whatever the machine's load);
2. captures it with a dynamic batch and compresses it with one pipeline, Deep
   Compression's recipe: ``fold-bn``; ``prune-channels`` (a quarter of the
   channels, ranked by Taylor importance on the training set); ``fine-tune``
   (12 epochs, cosine learning rate); ``share-weights{bits=4}`` (16 k-means
   values per layer, stored as 4-bit indices plus a codebook); ``fine-tune``
   again (4 epochs: the centroids train, the weights stay shared);
3. compiles the uncompressed graph (``default``) and the compressed one for
   this CPU through TVM, saves both artifacts and reloads them (hash-checked);
4. prints a table: held-out accuracy, weight bytes (eager: the model's fp32
   tensors; fxpress: what the artifact stores, its manifest's ``storage``
   entry) and latency (one image, and the whole 450-image test set in one
   batch) for eager PyTorch fp32, fxpress fp32 and fxpress compressed, then
   the compressed model's ratios against eager fp32.

Choices, measured on the 2-core Xeon this was written on: static int8 in
place of weight sharing stored 23 KiB (sharing: 12) and ran the 450-image
batch 1.9x slower than the pruned fp32 graph (quantize steps and int8 convs
over 8x8 images with 12-24 channels cost more than they save); shared
weights are decoded at load, so the kernels are the pruned fp32 ones.
A quarter of the channels, not half: with half, five of six training seeds
(seed 0 among them) lost 0.4-1.6 points; with a quarter, five of six stayed
within 0.5 points (the test set has 450 images: one image is 0.22 points).

The same model class is used by the benchmarks (tools/bench) and the tests.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_PIPELINE = "default"  # fold-bn,fold-constants,dce: the uncompressed fxpress build
PRUNE_RATIO = 0.25
TUNE_EPOCHS = 12
SHARE_BITS = 4
CENTROID_EPOCHS = 4


class DigitsCNN(nn.Module):
    """conv-bn-relu x2, max-pool, two linear layers: 1x8x8 -> 10 classes."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0) -> Digits:
    """scikit-learn's bundled digits, scaled to [0, 1], split 75/25 (stratified)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.25, random_state=seed, stratify=data.target)
    return Digits(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))


def train(data: Digits, *, epochs: int = 15, seed: int = 0, progress: bool = False) -> DigitsCNN:
    """Train a `DigitsCNN` with Adam for `epochs` epochs (seeded: the same model every run)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    steps: Iterable[int] = range(epochs)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="training", unit="epoch", leave=False)
    model.train()
    for _ in steps:
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(predict: Callable[[np.ndarray], np.ndarray], data: Digits) -> float:
    logits = predict(data.x_test.numpy())
    return float((np.asarray(logits).argmax(1) == data.y_test.numpy()).mean())


def median_ms(fn: Callable[[], Any], runs: int = 200) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compression_passes(data: Digits) -> list[Any]:
    """The demo's pipeline (pass objects: pruning, fine-tuning and calibration take data, which text cannot)."""
    from fxpress.passes import FineTune, FoldBatchNorm, ShareWeights
    from fxpress.passes.prune import PruneChannels
    from fxpress.train import ShuffledBatches

    ranking = list(ShuffledBatches(data.x_train, data.y_train, batch=128))  # (inputs, target): Taylor importance

    def tune(epochs: int, lr: float) -> FineTune:
        return FineTune(
            data=ShuffledBatches(data.x_train, data.y_train, seed=1), epochs=epochs, lr=lr, schedule="cosine"
        )

    return [
        FoldBatchNorm(),
        PruneChannels(ratio=PRUNE_RATIO, importance="taylor", data=ranking),
        tune(TUNE_EPOCHS, 3e-3),
        ShareWeights(bits=SHARE_BITS),
        tune(CENTROID_EPOCHS, 1e-3),  # trains the centroids: the weights stay shared
    ]


@dataclass(frozen=True)
class Row:
    """One line of the demo's table."""

    accuracy: float
    weight_bytes: int
    ms_one: float  # one image
    ms_all: float  # the whole test set in one batch


def run_demo(out: str | Path = "demo-artifact", *, epochs: int = 15, num_threads: int = 1) -> dict[str, Any]:
    """Train, compress, compile, save, reload; print and return the comparison.

    The compressed artifact is saved to `out`; the uncompressed fxpress build, to a temporary directory.
    """
    import fxpress

    def step(msg: str) -> float:
        print(f"  {msg} ...", flush=True)
        return time.perf_counter()

    torch.set_num_threads(num_threads)
    t = step("loading scikit-learn digits and training a CNN with BatchNorm")
    data = load_digits()
    model = train(data, epochs=epochs, progress=True)
    print(f"    trained in {time.perf_counter() - t:.1f} s")
    batch = torch.export.Dim("batch", min=1, max=4096)
    # an example batch of 8: torch.export specializes a size-1 dimension to the constant 1
    graph = fxpress.capture(model, (data.x_test[:8],), dynamic_shapes=({0: batch},))
    passes = compression_passes(data)
    t = step(f"compressing: {','.join(p.text() for p in passes)}")
    compressed = fxpress.optimize(graph, passes)
    print(f"    compressed in {time.perf_counter() - t:.1f} s")
    t = step("compiling the fp32 and the compressed graphs for this CPU through TVM")
    fp32 = fxpress.optimize(graph, DEFAULT_PIPELINE)
    with tempfile.TemporaryDirectory(prefix="fxpress-demo-fp32-") as tmp:  # the comparison build, not kept
        builds = {"fp32": (fp32, Path(tmp) / "fp32"), "": (compressed, Path(out))}
        paths = {
            k: fxpress.compile(g, target="x86", num_threads=num_threads).save(str(p)) for k, (g, p) in builds.items()
        }
        print(f"    compiled in {time.perf_counter() - t:.1f} s")
        modules = {k: fxpress.load(p) for k, p in paths.items()}
        fp32_bytes = _stored_bytes(paths["fp32"])

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    one, test = data.x_test[:1].numpy(), data.x_test.numpy()
    rows = {
        "eager PyTorch fp32": _row(eager, data, _param_bytes(model), one, test),
        "fxpress fp32 (TVM)": _row(modules["fp32"], data, fp32_bytes, one, test),
        "fxpress compressed": _row(modules[""], data, _stored_bytes(paths[""]), one, test),
    }
    diff = float(np.abs(modules["fp32"](test) - eager(test)).max())
    agree = float((modules[""](test).argmax(1) == compressed(data.x_test).argmax(1).numpy()).mean())
    _print(rows, len(test), diff, agree, paths[""], compressed.pipeline)
    return {
        "rows": rows,
        "max_abs_diff": diff,
        "compressed_agrees_with_its_graph": agree,
        "artifact": paths[""],
        "fp32_pipeline": fp32.pipeline,
    }


def _row(run: Callable[[np.ndarray], Any], data: Digits, weight_bytes: int, one: np.ndarray, test: np.ndarray) -> Row:
    return Row(accuracy(run, data), weight_bytes, median_ms(lambda: run(one)), median_ms(lambda: run(test), runs=20))


def _print(rows: dict[str, Row], images: int, diff: float, agree: float, path: str, pipeline: str) -> None:
    print()
    print(f"{'':22}{'test accuracy':>15}{'weights KiB':>13}{'ms (1 image)':>14}{f'ms ({images} images)':>17}")
    for name, r in rows.items():
        print(f"{name:22}{r.accuracy * 100:>14.2f}%{r.weight_bytes / 1024:>13.1f}{r.ms_one:>14.3f}{r.ms_all:>17.3f}")
    eager, best = rows["eager PyTorch fp32"], rows["fxpress compressed"]
    print(
        f"\ncompressed vs eager fp32: weights {eager.weight_bytes / best.weight_bytes:.1f}x smaller, "
        f"{eager.ms_one / best.ms_one:.1f}x faster on one image, {eager.ms_all / best.ms_all:.1f}x on the test set, "
        f"accuracy {(best.accuracy - eager.accuracy) * 100:+.2f} points"
    )
    print("weights: eager = the model's fp32 tensors; fxpress = the bytes its artifact stores (manifest 'storage')")
    print(f"max |fxpress fp32 - eager| over the test set: {diff:.2e}")
    print(f"compressed artifact vs its graph run by PyTorch: the same prediction on {agree:.1%} of the test set")
    print(f"pipeline: {pipeline}")
    print(f"artifact: {path}")
    print(f"run it:   fxpress run {path} --input x.npy   (x: float32 [N,1,8,8])")
    print(f"inspect:  fxpress inspect {path} --sizes")


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _stored_bytes(path: str | Path) -> int:
    """The weight bytes an artifact stores (its manifest's ``storage`` entry, format 3)."""
    return int(json.loads((Path(path) / "manifest.json").read_text())["storage"]["stored_bytes"])
