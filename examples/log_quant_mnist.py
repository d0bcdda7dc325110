"""Log-level 4-bit weights on the pretrained MNIST CNN (``ccexam``), int8 activations, post-training.

    make data && python examples/log_quant_mnist.py [--log-bits 4 3 2] [--calib 512] [--no-compile]

Each variant runs ``fold-bn,observe{per-channel=true,...},calibrate,fold-qdq``
calibrated on the first 512 training images (activations int8, per tensor;
weights symmetric per output channel) and is scored on all 10,000 MNIST test
images as the eager int8 graph (fxpress's integer reference ops):

- ``uniform N``: ``weight-bits=N``, the integers -(2^(N-1)-1)..2^(N-1)-1 (4 bits: [-7, 7]);
- ``log N``: ``weight-scheme=log,weight-bits=N``, zero and +-2^k (4 bits:
  {0, +-1, ..., +-64}) x a per-channel scale searched for the least squared
  weight error (``weight-observer=auto`` is ``mse`` for log weights);
- ``log N, max scale``: the same levels with ``weight-observer=minmax`` (the
  largest weight on the top level, no search).

It also measures the rounding rule: with the ``log 4`` scales, the weights
rounded to the nearest level (fxpress's rule) against rounding the exponent
(nearest in log space: midpoint sqrt(2) * 2^k), in per-layer weight SQNR and
in accuracy with float activations (so that only the weight rounding differs).
The ``log 4`` and ``uniform 4`` graphs are compiled for this CPU (x86): every
logit of the compiled model is compared with eager int8 on all 10,000 images
(bit-exact, or the script says how many differ), and the artifacts' weight
files are measured. Seeded (no training, no sampling: deterministic).
Writes examples/results/log_quant_mnist.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fxpress
from fxpress.data.mnist import mnist
from fxpress.ir.annotations import get
from fxpress.models.mnist_cnn import mnist_cnn, predict, preprocess
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe
from fxpress.quant import QuantParams
from fxpress.quant.scheme import round_log
from fxpress.runtime.artifact import WEIGHTS
from fxpress.runtime.cpu import host_cpu_model

OUT = Path("examples/results/log_quant_mnist")


def accuracy(model: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    return round(float((predict(model, images) == labels).double().mean()) * 100, 2)


def sqnr_db(ref: torch.Tensor, q: torch.Tensor) -> float:
    ref, q = ref.double(), q.double()
    noise = float(((ref - q) ** 2).sum())
    return math.inf if noise == 0 else round(10 * math.log10(float((ref**2).sum()) / noise), 2)


def round_log_exponent(ratio: torch.Tensor, top: int) -> torch.Tensor:
    """The other rounding rule, for comparison: the nearest exponent (midpoint sqrt(2) * 2^k), 0.5 to zero."""
    mag = ratio.abs()
    mantissa, exponent = torch.frexp(mag)
    k = (exponent - 1 + (mantissa > math.sqrt(0.5)).to(exponent.dtype)).clamp(0, top.bit_length() - 1)
    return torch.copysign(torch.where(mag > 0.5, torch.ldexp(torch.ones_like(mag), k), torch.zeros_like(mag)), ratio)


def weight_params(graph: fxpress.Graph) -> dict[str, tuple[torch.Tensor, QuantParams]]:
    """Each quantized weight of a calibrated graph (by parameter name) with its parameters."""
    found = {}
    for node in graph.nodes("get_attr"):
        p = get(node, QuantParams.key)
        if isinstance(p, QuantParams):
            found[str(node.target)] = (graph.param(node).detach(), p)
    return found


def rounded(weight: torch.Tensor, p: QuantParams, rule: Any) -> torch.Tensor:
    scale = p.scale.double().reshape(-1, *[1] * (weight.dim() - 1))
    return (rule(weight.double() / scale, p.scheme.qrange[1]) * scale).float()


def rounding_rules(
    model: torch.nn.Module, calibrated: fxpress.Graph, images: torch.Tensor, labels: torch.Tensor
) -> dict:
    """Nearest level vs nearest exponent at the same scales: weight SQNR per layer, accuracy with float activations."""
    params = weight_params(calibrated)
    result: dict[str, Any] = {}
    for name, rule in (("nearest_level", round_log), ("nearest_exponent", round_log_exponent)):
        copy = mnist_cnn()
        state = copy.state_dict()
        sqnr = {}
        for key, (weight, p) in params.items():
            state[key] = rounded(weight, p, rule)
            sqnr[key] = sqnr_db(weight, state[key])
        copy.load_state_dict(state)
        result[name] = {"weight_sqnr_db": sqnr, "accuracy_float_activations": accuracy(copy, images, labels)}
    return result


def artifact_weight_bytes(module: fxpress.CompiledModule) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return (Path(module.save(str(Path(tmp) / "artifact"))) / WEIGHTS).stat().st_size


def compiled_vs_eager(int8: fxpress.Graph, images: torch.Tensor, batch: int = 250) -> dict[str, Any]:
    """Every logit of the x86 build against eager int8: how many images differ, and the artifact's weight bytes."""
    compiled = fxpress.compile(int8, target="x86", num_threads=torch.get_num_threads())
    x = preprocess(images)
    differing, largest = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            ref = int8(x[i : i + batch]).numpy()
            got = np.asarray(compiled(x[i : i + batch].numpy()))
            differing += int((ref != got).any(axis=1).sum())
            largest = max(largest, float(np.abs(ref - got).max()))
    return {
        "bit_exact": differing == 0,
        "images_with_differing_logits": differing,
        "largest_logit_difference": largest,
        "artifact_weight_bytes": artifact_weight_bytes(compiled),
    }


def variants(log_bits: tuple[int, ...], baselines: bool = True) -> dict[str, Observe]:
    """The observe pass of each variant: uniform 4-bit, log at each width, log 4-bit with the max scale."""
    found = {"uniform 4": Observe(per_channel=True, weight_bits=4)} if baselines else {}
    for bits in log_bits:
        found[f"log {bits}"] = Observe(per_channel=True, weight_scheme="log", weight_bits=bits)
    if 4 in log_bits and baselines:
        found["log 4, max scale"] = Observe(
            per_channel=True, weight_scheme="log", weight_bits=4, weight_observer="minmax"
        )
    return found


def run(
    *,
    log_bits: tuple[int, ...] = (4, 3, 2),
    calib: int = 512,
    test: int | None = None,
    compile: bool = True,
    compare_rounding: bool = True,
    baselines: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """fp32 and int8 accuracy of each weight scheme on the first `test` test images (all when None).

    `baselines`: also uniform 4-bit and log 4-bit with the max scale; `compile`: build
    ``log 4`` and ``uniform 4`` for x86 and compare every logit with eager int8.
    """
    start = time.perf_counter()
    all_images, all_labels = mnist("test")
    images, labels = torch.as_tensor(all_images[:test]), torch.as_tensor(all_labels[:test])
    train_images, _ = mnist("train")
    model = mnist_cnn()
    batches = [(preprocess(train_images[i : i + 64]),) for i in range(0, calib, 64)]
    graph = fxpress.capture(model, batches[0], dynamic_shapes=({0: torch.export.Dim("batch")},))
    fp32 = accuracy(model, images, labels)
    result: dict[str, Any] = {"cpu": host_cpu_model(), "test_images": len(labels), "fp32": fp32, "variants": {}}
    calibrated_log4 = None
    for name, observe in variants(log_bits, baselines).items():
        calibrated = fxpress.optimize(graph, [FoldBatchNorm(), observe, Calibrate(data=batches)])
        int8 = fxpress.optimize(calibrated, [FoldQDQ()])
        acc = accuracy(int8, images, labels)
        values = sorted({int(v) for n, p in int8.gm.named_parameters() if n.endswith("weight_i8") for v in p.unique()})
        entry: dict[str, Any] = {
            "pipeline": ",".join(p.text() for p in [FoldBatchNorm(), observe, Calibrate(), FoldQDQ()]),
            "int8": acc,
            "minus_fp32": round(acc - fp32, 2),
            "weight_sqnr_db": {k: sqnr_db(w, p.fake_quantize(w)) for k, (w, p) in weight_params(calibrated).items()},
            "weight_values": values,
            "float": int8.trace[-1].stats["float"],
        }
        if compile and name in ("log 4", "uniform 4"):
            entry["compiled"] = compiled_vs_eager(int8, images)
        if name == "log 4":
            calibrated_log4 = calibrated
        result["variants"][name] = entry
        if verbose:
            print(f"{name}: int8 {acc:.2f} % (fp32 {fp32:.2f} %)", flush=True)
    if compare_rounding and calibrated_log4 is not None:
        result["rounding"] = rounding_rules(model, calibrated_log4, images, labels)
    result["options"] = {"calib": calib, "log_bits": list(log_bits), "threads": torch.get_num_threads()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"ccexam MNIST CNN, post-training, int8 activations, per-channel weights; accuracy on "
        f"{result['test_images']:,} test images (fp32 {result['fp32']:.2f} %); CPU: {result['cpu']}, "
        f"{result['options']['threads']} thread(s).",
        "",
        "| weights | int8 accuracy % | vs fp32 | weight SQNR dB per layer | integer levels | compiled == eager int8 "
        "| artifact weights |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for name, v in result["variants"].items():
        sqnr = ", ".join(_db(x) for x in v["weight_sqnr_db"].values())
        c = v.get("compiled")
        exact = "" if c is None else ("bit-exact" if c["bit_exact"] else f"{c['images_with_differing_logits']} differ")
        size = "" if c is None else f"{c['artifact_weight_bytes']:,} B"
        lines.append(
            f"| {name} | {v['int8']:.2f} | {v['minus_fp32']:+.2f} | {sqnr} | {len(v['weight_values'])} | {exact} "
            f"| {size} |"
        )
    if "rounding" in result:
        lines += [
            "",
            "Rounding rule at the `log 4` scales (float activations, so only the weight rounding differs):",
            "",
            "| rule | accuracy % | weight SQNR dB per layer |",
            "|---|---:|---|",
        ]
        for name, r in result["rounding"].items():
            sqnr = ", ".join(_db(x) for x in r["weight_sqnr_db"].values())
            lines.append(f"| {name.replace('_', ' ')} | {r['accuracy_float_activations']:.2f} | {sqnr} |")
    layers = ", ".join(next(iter(result["variants"].values()))["weight_sqnr_db"])
    lines += ["", f"Weight SQNR columns, in order: {layers}. {result['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-bits", type=int, nargs="+", default=[4, 3, 2])
    parser.add_argument("--calib", type=int, default=512, help="training images to calibrate on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT, help="<out>.json and <out>.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(log_bits=tuple(args.log_bits), calib=args.calib, compile=not args.no_compile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
