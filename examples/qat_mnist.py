"""Quantization-aware training of the pretrained MNIST CNN (``ccexam``) at 4-bit and 2-bit weights, 8-bit activations.

    make data && python examples/qat_mnist.py [--bits 4 2] [--epochs 1] [--train 60000] [--lr 1e-4]

For each weight bit width: ``fold-bn,observe{per-channel=true,weight-bits=N},calibrate``
on the first 512 training images (activations int8, weights symmetric N-bit:
[-7, 7] at 4 bits, [-1, 1] at 2), then the accuracy on all 10,000 MNIST test
images of post-training quantization (``fold-qdq`` at once) and of QAT
(`fxpress.train.qat`: fake-quantized training with LSQ-learned scales, Adam,
cross-entropy on the training images, cosine learning rate), each as the
eager int8 graph (fxpress's integer reference ops); the QAT model is compiled
for this CPU (x86) and its predictions compared with eager int8, and its
artifact's weight file measured (sub-8-bit weights are stored packed).
Seeded; writes examples/results/qat_mnist.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fxpress
from fxpress.data.mnist import mnist
from fxpress.models.mnist_cnn import mnist_cnn, predict, preprocess
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe
from fxpress.runtime.artifact import WEIGHTS
from fxpress.runtime.cpu import host_cpu_model
from fxpress.train import ShuffledBatches
from fxpress.train.qat import qat


def accuracy(model: object, images: torch.Tensor, labels: torch.Tensor) -> float:
    return round(float((predict(model, images) == labels).double().mean()) * 100, 2)


def artifact_weight_bytes(module: fxpress.CompiledModule) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return (Path(module.save(str(Path(tmp) / "artifact"))) / WEIGHTS).stat().st_size


def run(
    *,
    bits: tuple[int, ...] = (4, 2),
    epochs: int = 1,
    train: int = 60000,
    test: int | None = None,
    batch: int = 64,
    lr: float = 1e-4,
    seed: int = 0,
    compile: bool = True,
    verbose: bool = True,
) -> dict[str, object]:
    """fp32, post-training and QAT accuracy per weight bit width (on the first `test` test images when given)."""
    start = time.perf_counter()
    images, labels = mnist("test")
    images, labels = images[:test], torch.as_tensor(labels[:test])
    train_images, train_labels = mnist("train")
    model = mnist_cnn()
    calib = [(preprocess(train_images[i : i + 64]),) for i in range(0, 512, 64)]
    graph = fxpress.capture(model, calib[0], dynamic_shapes=({0: torch.export.Dim("batch")},))
    x_train = preprocess(train_images[:train])
    y_train = torch.as_tensor(train_labels[:train])
    fp32 = accuracy(model, images, labels)
    result: dict[str, object] = {"cpu": host_cpu_model(), "test_images": len(labels), "fp32": fp32, "bits": {}}
    for width in bits:
        observe = Observe(per_channel=True, weight_bits=width)
        calibrated = fxpress.optimize(graph, [FoldBatchNorm(), observe, Calibrate(data=calib)])
        ptq = accuracy(fxpress.optimize(calibrated, [FoldQDQ()]), images, labels)
        batches = ShuffledBatches(x_train, y_train, batch=batch, seed=seed)
        losses: list[float] = []
        t0 = time.perf_counter()
        trained = qat(
            calibrated,
            batches,
            epochs=epochs,
            lr=lr,
            loss=F.cross_entropy,
            schedule="cosine",
            seed=seed,
            history=losses,
            progress=verbose,
        )
        seconds = time.perf_counter() - t0
        int8 = fxpress.optimize(trained, [FoldQDQ()])
        after = accuracy(int8, images, labels)
        entry: dict[str, object] = {
            "post_training": ptq,
            "qat": after,
            "qat_minus_fp32": round(after - fp32, 2),
            "train_seconds": round(seconds, 1),
            "loss_per_epoch": [round(v, 5) for v in losses],
            "float": int8.trace[-1].stats["float"],
        }
        if compile:
            compiled = fxpress.compile(int8, target="x86", num_threads=2)
            same = int((predict(compiled, images) == predict(int8, images)).sum())
            entry["compiled_equals_eager_int8"] = f"{same} / {len(labels)}"
            entry["artifact_weight_bytes"] = artifact_weight_bytes(compiled)
        result["bits"][str(width)] = entry  # type: ignore[index]
        if verbose:
            print(f"{width}-bit weights: post-training {ptq:.2f} %, QAT {after:.2f} % (fp32 {fp32:.2f} %)", flush=True)
    result["options"] = {"epochs": epochs, "train": train, "batch": batch, "lr": lr, "seed": seed}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train", type=int, default=60000, help="training images used by QAT")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("examples/results/qat_mnist.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run(
        bits=tuple(args.bits), epochs=args.epochs, train=args.train, batch=args.batch, lr=args.lr, seed=args.seed
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
