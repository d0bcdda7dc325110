"""Post-training int8 quantization of all-MiniLM-L6-v2, and what it keeps.

    python examples/quantize_minilm.py [--ffn-out dynamic|float|static|bf16] [--no-weight-reduce-range] [--seq-len 128]

Calibrates on the 64 calibration sentences bundled in fxpress.models.sentences
(``observe{per-channel=true,weight-reduce-range=true},calibrate,fold-qdq``:
linears and the attention matmuls in int8, weights in 7 bits so that AVX2's
u8s8 kernel takes every linear; the six FFN down-projections, whose GELU
inputs no static range serves, quantize their input per row at run time
(``dynamic=[...]``) unless ``--ffn-out`` says float, static or bf16 (skipped by
``observe``, then ``cast-bf16{layers=[...]}`` after ``fold-qdq``: bfloat16 with
float32 sums, on AMX-BF16 tiles where the host has them), compiles the int8 graph for this CPU, and compares its
embeddings with fp32 eager PyTorch on the 336 other sentences: mean and min
cosine. It also compares, on the first batch, the compiled int8 model with the
int8 graph run in eager PyTorch (fxpress's reference ops): the integer ops are
bit-exact, the float ops between them (layer norm, softmax, GELU) are not, so
an int8 activation can land one step apart.
The README's numbers come from this script.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import fxpress
from fxpress.models.minilm import sentence_encoder, tokenize
from fxpress.models.sentences import sentences
from fxpress.passes import Calibrate, CastBf16, FoldQDQ, Observe

FFN_OUT = r"layer\.\d+\.output\.dense"  # the six FFN down-projections: the layers int8 hurts most (quant-report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ffn-out", choices=("dynamic", "float", "static", "bf16"), default="dynamic")
    parser.add_argument("--weight-reduce-range", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = sentence_encoder()
    calib, held_out = sentences("calib"), sentences("eval")
    batches = [tokenize(calib[i : i + 8], args.seq_len) for i in range(0, len(calib), 8)]
    dynamic = ({0: torch.export.Dim("batch")}, {0: torch.export.Dim("batch")})
    graph = fxpress.capture(encoder, batches[0], dynamic_shapes=dynamic)
    skip = (FFN_OUT,) if args.ffn_out in ("float", "bf16") else ()
    dynamic = (FFN_OUT,) if args.ffn_out == "dynamic" else ()
    observe = Observe(per_channel=True, weight_reduce_range=args.weight_reduce_range, skip=skip, dynamic=dynamic)
    bf16 = [CastBf16(layers=(FFN_OUT,))] if args.ffn_out == "bf16" else []
    quantized = fxpress.optimize(graph, [observe, Calibrate(data=batches), FoldQDQ(), *bf16])
    stats = next(r.stats for r in quantized.trace if r.pipeline.startswith("fold-qdq"))
    compiled = fxpress.compile(quantized, target="x86", num_threads=2)
    ids, mask = tokenize(held_out, args.seq_len)
    with torch.no_grad():
        ref = torch.cat([encoder(ids[i : i + 16], mask[i : i + 16]) for i in range(0, len(held_out), 16)])
        first = quantized(ids[:8], mask[:8])
    out = torch.cat(
        [torch.as_tensor(np.asarray(compiled(ids[i : i + 16], mask[i : i + 16]))) for i in range(0, len(held_out), 16)]
    )
    gap = float((out[:8] - first).abs().max())
    cos = torch.nn.functional.cosine_similarity(ref, out)
    print(f"int8 ops: {stats['folded']}, left in float: {len(stats['float'])} (FFN down-projections: {args.ffn_out})")
    print(f"compiled int8 vs eager int8 graph, first batch: max abs diff {gap:.2e}")
    print(f"cosine to fp32 on {len(held_out)} held-out sentences (seq {args.seq_len}): "
          f"mean {cos.mean():.4f}, min {cos.min():.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
