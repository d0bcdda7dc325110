"""Quantization-aware training of all-MiniLM-L6-v2 with every linear and attention matmul static int8.

    python examples/qat_minilm.py [--epochs 8] [--lr 1e-5] [--qparams-lr 1e-2] [--batch 4] [--seq-len 128]

Post-training static int8 of every linear (the FFN down-projections too) and
both attention matmuls (``observe{per-channel=true},calibrate,fold-qdq``)
loses the most where GELU outputs meet one static range. This script
calibrates on the 64 calibration sentences bundled in
fxpress.models.sentences, then trains the fake-quantized graph
(``fake-quantize`` with LSQ-learned scales, Adam: weights at 1e-5, each
scale at 1 % of itself per step) on those same 64 sentences, 4 a batch, 8
epochs, to match the fp32 model's embeddings (loss ``1 - cosine``), freezes it,
folds it into int8 (``freeze-fake-quant,fold-qdq``) and measures, on the 336
held-out sentences, the cosine of the int8 embeddings to fp32: post-training
and after QAT, eager int8 graph and compiled (x86, this CPU). It also checks
that the compiled int8 model matches the eager int8 graph. Seeded; writes a
JSON file and prints a table (the README's numbers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import fxpress
from fxpress.models.minilm import sentence_encoder, tokenize
from fxpress.models.sentences import sentences
from fxpress.passes import Calibrate, FoldQDQ, Observe
from fxpress.runtime.cpu import host_cpu_model
from fxpress.train.qat import qat


def cosine_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - torch.nn.functional.cosine_similarity(out, target)).mean()


def embed(run: object, ids: torch.Tensor, mask: torch.Tensor, batch: int = 16) -> torch.Tensor:
    outs = []
    for i in range(0, len(ids), batch):
        out = run(ids[i : i + batch], mask[i : i + batch])  # type: ignore[operator]
        outs.append(torch.as_tensor(np.asarray(out)))
    return torch.cat(outs)


def cosines(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(ref, out)
    return {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4)}


def run(
    *,
    epochs: int = 8,
    lr: float = 1e-5,
    qparams_lr: float = 1e-2,
    batch: int = 4,
    seq_len: int = 128,
    seed: int = 0,
    calib_sentences: int | None = None,
    eval_sentences: int | None = None,
    compile: bool = True,
) -> dict[str, object]:
    """Post-training vs QAT cosines to fp32 on the held-out sentences (the first N of each split when given)."""
    encoder = sentence_encoder()
    calib, held_out = sentences("calib")[:calib_sentences], sentences("eval")[:eval_sentences]
    batches = [tokenize(calib[i : i + 8], seq_len) for i in range(0, len(calib), 8)]
    dynamic = ({0: torch.export.Dim("batch")}, {0: torch.export.Dim("batch")})
    graph = fxpress.capture(encoder, batches[0], dynamic_shapes=dynamic)
    calibrated = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=batches)])
    ids, mask = tokenize(held_out, seq_len)
    with torch.no_grad():
        ref = embed(encoder, ids, mask)
        train = [  # the fp32 model's embeddings are the targets
            (i[k : k + batch], m[k : k + batch], encoder(i, m)[k : k + batch])
            for i, m in batches
            for k in range(0, len(i), batch)
        ]
    ptq = fxpress.optimize(calibrated, [FoldQDQ()])
    result: dict[str, object] = {"cpu": host_cpu_model(), "seq_len": seq_len, "sentences": [len(calib), len(held_out)]}
    result["int8_ops"] = ptq.trace[-1].stats["folded"]
    result["float_ops"] = ptq.trace[-1].stats["float"]
    result["post_training"] = cosines(ref, embed(ptq, ids, mask))
    losses: list[float] = []
    start = time.perf_counter()
    trained = qat(
        calibrated,
        train,
        epochs=epochs,
        lr=lr,
        qparams_lr=qparams_lr,
        loss=cosine_loss,
        seed=seed,
        history=losses,
        progress=False,
    )
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    result["loss_per_epoch"] = [round(v, 6) for v in losses]
    int8 = fxpress.optimize(trained, [FoldQDQ()])
    result["qat"] = cosines(ref, embed(int8, ids, mask))
    if compile:
        compiled = fxpress.compile(int8, target="x86", num_threads=2)
        out = embed(compiled, ids, mask)
        result["qat_compiled"] = cosines(ref, out)
        result["compiled_vs_eager_int8_max_abs"] = float((out[:8] - int8(ids[:8], mask[:8])).abs().max())
    result["options"] = {"epochs": epochs, "lr": lr, "qparams_lr": qparams_lr, "batch": batch, "seed": seed}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--qparams-lr", type=float, default=1e-2, help="scales step at this fraction of themselves")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled check")
    parser.add_argument("--out", type=Path, default=Path("examples/results/qat_minilm.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run(
        epochs=args.epochs,
        lr=args.lr,
        qparams_lr=args.qparams_lr,
        batch=args.batch,
        seq_len=args.seq_len,
        seed=args.seed,
        compile=not args.no_compile,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
