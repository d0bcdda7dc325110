"""Int8 on a mobile net: fxpress against OpenVINO + NNCF's default post-training int8, side by side.

    make setup && python examples/mobilenet_int8.py [--train 12000] [--epochs 3] [--calib 256] [--held-out 9984]

The EfficientNet-Lite0-shaped net (fxpress.models.efficientnet: depthwise 3x3 / 5x5 convs, ReLU6, inverted
residuals, BN after every conv) is trained here for a few epochs on Fashion-MNIST (Debian's
``dataset-fashion-mnist``: real images, nothing downloaded; 28 px padded to 32, grey copied to three
channels), so its activations have the ranges a trained mobile net has, which is what makes int8 hard on
depthwise layers. The trained weights are cached under build/cache/ (keyed by the options).

Both int8 models are calibrated on the same `--calib` training images and judged on the same `--held-out`
test images, never trained or calibrated on: top-1 agreement with the fp32 model (how often int8
predicts what fp32 predicts), top-1 accuracy against the labels, and the cosine of the logits to fp32.

- fxpress: ``fold-bn,observe{per-channel=true,observer=O},calibrate{bias-correction=B},fold-qdq``
  (asymmetric per-tensor activations, symmetric per-channel weights), O in minmax / histogram /
  percentile and B on or off: the six recipes are scored on `--held-out` *validation* images (training
  split, never trained or calibrated on) and the best by agreement is the one compared, so the test
  images choose nothing; every recipe's test numbers are in the JSON too. Recipes are scored with
  their TVM builds; the chosen one is reported with fxpress's integer reference ops in eager PyTorch,
  and the TVM build is checked to predict the same on a batch.
- NNCF: ``nncf.quantize`` on the OpenVINO model of the same ONNX export with its defaults (preset
  PERFORMANCE, fast bias correction), the same calibration images (``subset_size`` = all), run by OpenVINO.

Writes examples/results/mobilenet_int8.json and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import fxpress
from fxpress.data.fashion_mnist import fashion_mnist
from fxpress.models.efficientnet import efficientnet_lite0
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = 0.2860, 0.3530
BATCH = 64  # the graph is captured at this batch; calibration and held-out counts are multiples of it


def images(raw: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` -> float32 ``[N, 3, 32, 32]``: normalised, zero-padded to 32 px, three channels."""
    x = ((raw.float() / 255) - MEAN) / STD
    x = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def train(n: int, epochs: int, seed: int) -> torch.nn.Module:
    """The EfficientNet-Lite0-shaped net trained on the first `n` training images (cached)."""
    cache = ROOT / "build" / "cache" / f"efficientnet_lite0_fmnist_n{n}_e{epochs}_s{seed}.pt"
    model = efficientnet_lite0(num_classes=10, seed=seed)
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    raw, labels = fashion_mnist("train")
    x, y = images(raw[:n]), labels[:n]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (n // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(n // 64):
            idx = order[i * 64 : (i + 1) * 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / (n // 64):.3f} ({time.perf_counter() - t0:.0f} s)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


def nncf_int8(model: torch.nn.Module, calib: list[torch.Tensor], workdir: Path) -> Any:
    """OpenVINO + NNCF default post-training int8 of `model` (via ONNX), compiled for one CPU thread."""
    os.environ.setdefault("NNCF_CI", "1")  # no telemetry
    import nncf
    import openvino as ov

    onnx_path = workdir / "model.onnx"
    torch.onnx.export(model, (calib[0],), str(onnx_path), input_names=["x"], dynamo=False)
    ov_model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize(ov_model, nncf.Dataset(calib, lambda b: {"x": b.numpy()}), subset_size=len(calib))
    return ov.Core().compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": 1})


def recipe_text(observer: str, correct: bool) -> str:
    text = (
        f"fold-bn,observe{{per-channel=true,observer={observer}}},calibrate{{bias-correction={str(correct).lower()}}}"
    )
    return text + ",fold-qdq"


def quantize(graph: fxpress.Graph, calib: list[torch.Tensor], observer: str, correct: bool) -> fxpress.Graph:
    """The int8 graph of one recipe: `observer` for the activations, bias correction or not."""
    passes = [FoldBatchNorm(), Observe(per_channel=True, observer=observer)]
    passes += [Calibrate(data=[(b,) for b in calib], bias_correction=correct), FoldQDQ()]
    return fxpress.optimize(graph, passes)


def metrics(logits: torch.Tensor, fp32: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(logits.double(), fp32.double(), dim=1).mean()
    return {
        "agreement": float((logits.argmax(1) == fp32.argmax(1)).double().mean()),
        "accuracy": float((logits.argmax(1) == labels).double().mean()),
        "cosine": float(cos),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=12000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--calib", type=int, default=256, help="calibration images (from the training split)")
    parser.add_argument(
        "--held-out", type=int, default=9984, help="test images the comparison runs on (and validation images)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "examples" / "results" / "mobilenet_int8.json"))
    args = parser.parse_args()
    if args.calib % BATCH or args.held_out % BATCH or not args.calib or not args.held_out:
        parser.error(f"--calib and --held-out must be positive multiples of {BATCH}")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = train(args.train, args.epochs, args.seed)
    raw, _ = fashion_mnist("train")
    calib_x = images(raw[args.train : args.train + args.calib])  # not trained on
    calib = list(calib_x.split(BATCH))
    test_raw, test_labels = fashion_mnist("test")
    x, labels = images(test_raw[: args.held_out]), test_labels[: args.held_out]
    batches = list(x.split(BATCH))
    with torch.no_grad():
        fp32 = torch.cat([model(b) for b in batches])

    graph = fxpress.capture(model, (batches[0],))
    val = list(images(raw[args.train + args.calib : args.train + args.calib + args.held_out]).split(BATCH))
    with torch.no_grad():
        val_fp32 = torch.cat([model(b) for b in val])
    choices = {
        recipe_text(o, c): (o, c) for o, c in itertools.product(("minmax", "histogram", "percentile"), (False, True))
    }
    recipes = {}  # each recipe: agreement on the validation images (never trained or calibrated on)
    for text, (observer, correct) in choices.items():
        q = fxpress.compile(quantize(graph, calib, observer, correct), target="x86", num_threads=1)  # fast to run
        recipes[text] = {
            "validation": metrics(torch.cat([q(b) for b in val]), val_fp32, val_fp32.argmax(1)),
            "test": metrics(torch.cat([q(b) for b in batches]), fp32, labels),
        }
    best = max(recipes, key=lambda r: recipes[r]["validation"]["agreement"])
    observer, correct = choices[best]
    int8 = quantize(graph, calib, observer, correct)
    ours = torch.cat([int8(b) for b in batches])
    compiled = fxpress.compile(int8, target="x86", num_threads=1)
    exact = bool(torch.equal(compiled(batches[0]).argmax(1), ours[:BATCH].argmax(1)))
    max_diff = float((compiled(batches[0]) - ours[:BATCH]).abs().max())

    with tempfile.TemporaryDirectory() as tmp:
        ov_int8 = nncf_int8(model, calib, Path(tmp))
        theirs = torch.cat([torch.from_numpy(ov_int8({"x": b.numpy()})[0]) for b in batches])

    result = {
        "model": "EfficientNet-Lite0-shaped (fxpress.models.efficientnet), 3x32x32, trained on Fashion-MNIST",
        "options": {**vars(args), "out": os.path.relpath(args.out, ROOT)},
        "fp32": metrics(fp32, fp32, labels),
        "fxpress_int8": metrics(ours, fp32, labels)
        | {"recipe": best, "chosen_on": "validation agreement", "tvm_vs_eager_max_diff": max_diff},
        "nncf_int8": metrics(theirs, fp32, labels) | {"recipe": "nncf.quantize defaults (preset PERFORMANCE)"},
        "fxpress_recipes": recipes,
        "tvm_build_predicts_as_eager_int8": exact,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':14} {'agreement':>10} {'accuracy':>9} {'cosine':>8}")
    for name in ("fp32", "fxpress_int8", "nncf_int8"):
        m = result[name]
        print(f"{name:14} {m['agreement']:10.4f} {m['accuracy']:9.4f} {m['cosine']:8.5f}")
    print(f"TVM build predicts as eager int8 on the first {BATCH}: {exact} (max |diff| {max_diff:.2e})")
    for text, r in recipes.items():
        print(f"  {text}: validation {r['validation']['agreement']:.4f}, test {r['test']['agreement']:.4f}")
    print(f"chosen on validation: {best}")
    print(f"held-out {args.held_out} images, calibration {args.calib}; wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
