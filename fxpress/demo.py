"""`fxpress demo`: the whole flow on a bundled default, in well under a minute.

1. trains a small CNN with BatchNorm on scikit-learn's bundled digits (8x8
   grey images, 1797 samples; nothing is downloaded) for a fixed number of
   epochs (a few seconds; deterministic, whatever the machine's load);
2. captures it with a dynamic batch, runs ``fold-bn,fold-constants,dce``;
3. compiles it for this CPU through TVM and saves the artifact;
4. reloads the artifact (hash-checked) and prints a table: accuracy on the
   held-out quarter, parameter size and single-image latency, eager vs
   compiled, and the largest output difference between them.

The same model class is used by the benchmarks (tools/bench) and the tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PIPELINE = "fold-bn,fold-constants,dce"


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


def run_demo(out: str | Path = "demo-artifact", *, epochs: int = 15, num_threads: int = 1) -> dict[str, Any]:
    """Train, compress, compile, save, reload; print and return the comparison."""
    import fxpress

    def step(msg: str) -> float:
        print(f"  {msg} ...", flush=True)
        return time.perf_counter()

    torch.set_num_threads(num_threads)
    t = step("loading scikit-learn digits and training a CNN with BatchNorm")
    data = load_digits()
    model = train(data, epochs=epochs, progress=True)
    print(f"    trained in {time.perf_counter() - t:.1f} s")
    t = step(f"capturing and running the pipeline {PIPELINE!r}")
    batch = torch.export.Dim("batch", min=1, max=4096)
    # an example batch of 8: torch.export specializes a size-1 dimension to the constant 1
    graph = fxpress.capture(model, (data.x_test[:8],), dynamic_shapes=({0: batch},))
    graph = fxpress.optimize(graph, PIPELINE)
    t = step("compiling for this CPU through TVM")
    compiled = fxpress.compile(graph, target="x86", num_threads=num_threads)
    print(f"    compiled in {time.perf_counter() - t:.1f} s")
    path = compiled.save(str(out))
    module = fxpress.load(path)

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    one = data.x_test[:1].numpy()
    diff = float(np.abs(module(data.x_test.numpy()) - eager(data.x_test.numpy())).max())
    rows = {
        "eager PyTorch fp32": (accuracy(eager, data), _param_bytes(model), median_ms(lambda: eager(one))),
        "fxpress x86 (TVM)": (
            accuracy(module, data),
            _artifact_weight_bytes(Path(path)),
            median_ms(lambda: module(one)),
        ),
    }
    print()
    print(f"{'':22}{'test accuracy':>15}{'weights KiB':>13}{'latency ms (1 image)':>22}")
    for name, (acc, size, ms) in rows.items():
        print(f"{name:22}{acc * 100:>14.2f}%{size / 1024:>13.1f}{ms:>22.3f}")
    print(f"\nmax |compiled - eager| over the test set: {diff:.2e}")
    print(f"artifact: {path}")
    print(f"run it:   fxpress run {path} --input x.npy   (x: float32 [N,1,8,8])")
    print(f"inspect:  fxpress inspect {path}")
    return {"rows": rows, "max_abs_diff": diff, "artifact": path}


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _artifact_weight_bytes(path: Path) -> int:
    return (path / "weights.safetensors").stat().st_size
