"""Post-training int8 quantization of the pretrained MNIST CNN (``ccexam``) on the real MNIST test set.

    make data && python examples/quantize_mnist.py [--calib 512] [--batch 250] [--threads 1] [--no-weight-reduce-range]

Runs ``fold-bn,observe{per-channel=true,weight-reduce-range=true},calibrate,fold-qdq``
(7-bit weights: the AVX2 u8s8 kernels, whose weights stay int8 in the artifact) on ccexam's
MNISTNet captured with a dynamic batch, calibrated on the first 512 training
images, then prints, on all 10,000 test images: fp32 and int8 accuracy
(eager PyTorch runs fxpress's integer reference ops), how often int8 predicts
what fp32 predicts, the weight bytes of the fp32 and int8 graphs and of the
two artifacts compiled for x86 with TVM, and whether the TVM build predicts
exactly what eager int8 predicts. Nothing is downloaded here: the data comes
from ``python -m fxpress.data.mnist fetch`` (``make data``), the model from
the installed ``ccexam`` package.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import fxpress
from fxpress.data.mnist import mnist
from fxpress.models.mnist_cnn import mnist_cnn, predict, preprocess
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe
from fxpress.runtime.artifact import WEIGHTS


def artifact_weight_bytes(module: fxpress.CompiledModule) -> int:
    """Size of the weights file of `module` saved as an artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        return (Path(module.save(str(Path(tmp) / "artifact"))) / WEIGHTS).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=512, help="training images to calibrate on")
    parser.add_argument("--batch", type=int, default=250, help="inference batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch and TVM threads")
    parser.add_argument("--weight-reduce-range", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    images, labels = mnist("test")
    train_images, _ = mnist("train")
    model = mnist_cnn()

    fp32_pred = predict(model, images, args.batch)
    calib = [(preprocess(train_images[i : i + 64]),) for i in range(0, args.calib, 64)]
    graph = fxpress.capture(model, calib[0], dynamic_shapes=({0: torch.export.Dim("batch")},))
    observe = Observe(per_channel=True, weight_reduce_range=args.weight_reduce_range)
    quantized = fxpress.optimize(graph, [FoldBatchNorm(), observe, Calibrate(data=calib), FoldQDQ()])
    stats = quantized.trace[-1].stats
    int8_pred = predict(quantized, images, args.batch)

    compiled_fp32 = fxpress.compile(graph, target="x86", num_threads=args.threads)
    compiled_int8 = fxpress.compile(quantized, target="x86", num_threads=args.threads)
    tvm_fp32_pred = predict(compiled_fp32, images, args.batch)
    tvm_int8_pred = predict(compiled_int8, images, args.batch)

    n = len(labels)
    acc = {k: (p == labels).double().mean().item() * 100 for k, p in (("fp32", fp32_pred), ("int8", int8_pred))}
    fp32_bytes, int8_bytes = graph.param_bytes, quantized.param_bytes
    fp32_art, int8_art = artifact_weight_bytes(compiled_fp32), artifact_weight_bytes(compiled_int8)
    rows = [
        ("test images", f"{n}", ""),
        ("calibration images (train)", f"{len(calib) * 64}", f"{len(calib)} batches of 64"),
        ("layers folded to int8", f"{stats['folded']}", f"left in float: {stats['float'] or 'none'}"),
        ("accuracy fp32 (eager)", f"{acc['fp32']:.2f} %", f"{int((fp32_pred == labels).sum())} correct"),
        ("accuracy int8 (eager reference)", f"{acc['int8']:.2f} %", f"{acc['int8'] - acc['fp32']:+.2f} points"),
        ("int8 predicts what fp32 predicts", f"{(int8_pred == fp32_pred).double().mean().item() * 100:.2f} %", ""),
        ("weights fp32 / int8 (graph params)", f"{fp32_bytes} / {int8_bytes} B", f"{fp32_bytes / int8_bytes:.2f}x"),
        ("weights fp32 / int8 (x86 artifacts)", f"{fp32_art} / {int8_art} B", f"{fp32_art / int8_art:.2f}x"),
        ("TVM fp32 == eager fp32 predictions", f"{int((tvm_fp32_pred == fp32_pred).sum())} / {n}", ""),
        ("TVM int8 == eager int8 predictions", f"{int((tvm_int8_pred == int8_pred).sum())} / {n}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")
    print(f"({time.perf_counter() - start:.0f} s, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
