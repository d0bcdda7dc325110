"""Post-training int8 quantization of all-MiniLM-L6-v2's linear layers, and what it keeps.

    python examples/quantize_minilm.py [--skip-ffn-out/--no-skip-ffn-out] [--seq-len 64]

Calibrates on the 64 calibration sentences bundled in fxpress.models.sentences,
then compares the int8 model's embeddings with fp32 on 64 held-out sentences
(eager PyTorch runs fxpress's integer reference ops) and prints the cosine.
The README's numbers come from this script.
"""

from __future__ import annotations

import argparse

import torch

import fxpress
from fxpress.models.minilm import sentence_encoder, tokenize
from fxpress.models.sentences import sentences
from fxpress.passes import Calibrate, FoldQDQ, Observe

FFN_OUT = r"layer\.\d+\.output\.dense"  # the six FFN down-projections: the layers int8 hurts most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-ffn-out", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = sentence_encoder()
    calib, held_out = sentences("calib"), sentences("eval")[:64]
    batches = [tokenize(calib[i : i + 8], args.seq_len) for i in range(0, len(calib), 8)]
    graph = fxpress.capture(encoder, batches[0])
    skip = (FFN_OUT,) if args.skip_ffn_out else ()
    quantized = fxpress.optimize(graph, [Observe(per_channel=True, skip=skip), Calibrate(data=batches), FoldQDQ()])
    stats = quantized.trace[-1].stats
    ids, mask = tokenize(held_out, args.seq_len)
    with torch.no_grad():
        ref = torch.cat([encoder(ids[i : i + 8], mask[i : i + 8]) for i in range(0, len(held_out), 8)])
        out = torch.cat([quantized(ids[i : i + 8], mask[i : i + 8]) for i in range(0, len(held_out), 8)])
    cos = torch.nn.functional.cosine_similarity(ref, out)
    print(f"int8 linears: {stats['folded']}, float: {len(stats['float'])}")
    print(f"cosine to fp32 on {len(held_out)} held-out sentences: mean {cos.mean():.4f}, min {cos.min():.4f}")


if __name__ == "__main__":
    main()
