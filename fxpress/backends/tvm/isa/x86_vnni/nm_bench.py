"""Is a 2:4 int8 kernel faster than the dense int8 GEMM on a VNNI CPU? A measured answer (issue 18 item 2).

2:4 sparsity keeps 2 of every 4 consecutive weights of an output row. Stored
compressed, a row is K/2 int8 values and K/2 two-bit positions; a kernel
does half the multiply-adds of a dense one but must bring each output lane
its own activations. The best VNNI form found (this file):

    for each 8 dense columns (two groups of 4: one quad of kept weights per lane)
        a   = vpermb(select[n/16, g], broadcast_8_bytes(x[m, 8g : 8g + 8]))   # each lane's 4 activations
        acc = vpdpbusd(acc, a, w_kept[n/16, g])                              # 64 multiply-adds, half of 128

so it issues one ``vpermb`` and one ``vpdpbusd`` where the dense GEMM issues
two ``vpdpbusd``. Both permutes and dot products go to the vector ports
(port 5 takes ``vpermb``, ports 0 and 5 ``vpdpbusd``), so the instruction
count and the port pressure are those of the dense kernel: no speed-up is to
be expected, and the dense kernel fxpress picks on an AMX CPU is the AMX
GEMM, several times faster again. The kernel here is hand-written TIR
(register tile of MR rows x 16 lanes, accumulators on the stack so LLVM
keeps them in registers), checked bit-exact against torch, and timed beside
`bench.microbench`'s dense VNNI GEMM at the same shape (int32 out, no
epilogue, one thread).

    .venv/bin/python -m fxpress.backends.tvm.isa.x86_vnni.nm_bench [M K N ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from tvm import tirx
from tvm.script import tirx as T

from fxpress.backends.tvm.isa.x86_vnni.bench import (
    build_gemm,
    group_activations,
    host_target,
    pack_gemm_weights,
    unique_name,
)

MR = 8  # rows of the register tile: 8 x 16 int32 accumulators (512 bytes: kept on the stack, in registers)


def compress_2_4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept[N/16, K/8, 16, 4] int8, select[N/16, K/8, 16, 4] uint8)`` of a 2:4 int8 weight ``[N, K]``.

    Lane n of quad g holds the kept weights of dense columns ``8g .. 8g + 7``
    (two from each group of 4) and, in `select`, their positions in that
    8-column window: what ``vpermb`` takes to pick each lane's activations.
    """
    n, k = w.shape
    groups = w.reshape(n, k // 4, 4)
    nonzero = groups.ne(0).to(torch.int8)
    # the two kept positions of each group: nonzeros first (stable), padded with zeros where fewer are nonzero
    order = torch.sort(nonzero, dim=-1, descending=True, stable=True).indices[..., :2]
    kept = torch.gather(groups, -1, order)  # [N, K/4, 2]
    window = order + 4 * (torch.arange(k // 4) % 2)[None, :, None]  # position in the 8-column window
    kept = kept.reshape(n // 16, 16, k // 8, 4).permute(0, 2, 1, 3).contiguous()
    select = window.reshape(n // 16, 16, k // 8, 4).permute(0, 2, 1, 3).to(torch.uint8).contiguous()
    return kept, select


def nm_func(m: int, k: int, n: int, name: str) -> tirx.PrimFunc:
    """C[m, n] (int32) = sum over kept weights: the 2:4 kernel of the module doc, as hand-written TIR."""
    groups, panels = k // 8, n // 16

    @T.prim_func(s_tir=True)
    def func(
        X: T.Buffer((m, k), "uint8"),  # type: ignore[valid-type]
        W: T.Buffer((panels, groups, 16, 4), "int8"),  # type: ignore[valid-type]
        S: T.Buffer((panels, groups, 16, 4), "uint8"),  # type: ignore[valid-type]
        C: T.Buffer((m, n), "int32"),  # type: ignore[valid-type]
    ) -> None:
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        # X's rows as 8-byte words: a window broadcast straight from memory (a load, no shuffle)
        X8 = T.decl_buffer((m, k // 8), "int64", data=X.data)
        for mo in range(m // MR):
            for p in range(panels):
                acc = T.alloc_buffer((MR, 16), "int32")
                for r in T.unroll(MR):
                    acc[r, T.ramp(0, 1, 16)] = T.broadcast(T.int32(0), 16)
                for g in range(groups):
                    for r in T.unroll(MR):  # one expression: a bound name would become a memory temporary
                        acc[r, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                            "int32x16",
                            "llvm.x86.avx512.vpdpbusd.512",
                            acc[r, T.ramp(0, 1, 16)],
                            T.call_llvm_pure_intrin(
                                "uint8x64",
                                "llvm.x86.avx512.permvar.qi.512",
                                T.reinterpret("uint8x64", T.broadcast(X8[mo * MR + r, g], 8)),
                                S.vload([p, g, 0, 0], "uint8x64"),
                            ),
                            W.vload([p, g, 0, 0], "int8x64"),
                        )
                for r in T.unroll(MR):
                    C[mo * MR + r, T.ramp(p * 16, 1, 16)] = acc[r, T.ramp(0, 1, 16)]

    return func


def bench(m: int, k: int, n: int, repeat: int = 15, seed: int = 0) -> dict[str, Any]:
    """Build, check (bit-exact vs torch) and time the 2:4 kernel; the dense VNNI GEMM beside it, interleaved."""
    from fxpress.runtime import set_num_threads

    set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int32).to(torch.int8)
    ranks = torch.rand(n, k // 4, 4, generator=gen).argsort(-1).argsort(-1)
    w = w * (ranks < 2).reshape(n, k).to(torch.int8)  # 2 of every 4 kept
    a = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int32).to(torch.uint8)
    kept, select = compress_2_4(w)
    name = unique_name(f"fx_nm24_{m}_{k}_{n}")
    module = tvm.compile(tvm.IRModule({name: nm_func(m, k, n, name)}), target=host_target(1)).mod
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(t.numpy(), dev) for t in (a, kept, select)]
    out = tvm.runtime.tensor(np.zeros((m, n), dtype="int32"), dev)
    module[name](*args, out)
    expected = (a.to(torch.int32) @ w.to(torch.int32).t()).numpy()
    if not np.array_equal(out.numpy(), expected):
        raise AssertionError("the 2:4 kernel differs from torch's integer matmul")
    timer = module.time_evaluator(name, dev, number=20, repeat=1)
    dense_module, dense_name = build_gemm(m, k, n, 16, host_target(1))
    dense_args = [
        tvm.runtime.tensor(group_activations(a).numpy(), dev),
        tvm.runtime.tensor(pack_gemm_weights(w, 16).numpy(), dev),
        tvm.runtime.tensor(np.zeros((m, n), dtype="int32"), dev),
    ]
    dense_module[dense_name](*dense_args)
    if not np.array_equal(dense_args[2].numpy(), expected):
        raise AssertionError("the dense VNNI GEMM differs from torch's integer matmul")
    dense_timer = dense_module.time_evaluator(dense_name, dev, number=20, repeat=1)
    sparse, dense = [], []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):  # interleaved
        sparse.append(float(timer(*args, out).results[0]))
        dense.append(float(dense_timer(*dense_args).results[0]))
    cpu_per_wall = (time.process_time() - c0) / (time.perf_counter() - w0)
    s_ms, d_ms = 1e3 * float(np.median(sparse)), 1e3 * float(np.median(dense))
    return {
        "shape": [m, k, n],
        "nm_2_4_ms": s_ms,
        "dense_vnni_ms": d_ms,
        "speedup_vs_dense_vnni": d_ms / s_ms,
        "nm_dense_equivalent_gops": 2 * m * n * k / (s_ms * 1e-3) / 1e9,
        "dense_gops": 2 * m * n * k / (d_ms * 1e-3) / 1e9,
        "threads": 1,
        "cpu_per_wall": cpu_per_wall,
        "exact": True,
    }


def write(rows: list[dict[str, Any]], out: Path) -> None:
    """`rows` as ``<out>.json`` and a Markdown table ``<out>.md``."""
    from fxpress.runtime.cpu import host_cpu_model

    cpu = host_cpu_model()
    out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "results": rows}, indent=1) + "\n")
    lines = [
        "# 2:4 int8 on a VNNI CPU: compressed kernel vs the dense int8 GEMMs",
        "",
        f"{cpu}, 1 thread; `python -m fxpress.backends.tvm.isa.x86_vnni.nm_bench`. int32 out, no epilogue; "
        "medians of interleaved runs; every kernel bit-exact vs torch. The dense kernel `fxpress.compile` picks "
        "for such a linear on an AMX CPU is the AMX GEMM.",
        "",
        "| M x K x N | 2:4 VNNI ms | dense VNNI ms | dense AMX ms | 2:4 vs dense VNNI | 2:4 vs dense AMX | CPU/wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        amx, nm = r.get("dense_amx_ms"), r["nm_2_4_ms"]
        amx_ms, vs_amx = ("", "") if amx is None else (f"{amx:.3f}", f"{amx / nm:.2f}")
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {nm:.3f} | {r['dense_vnni_ms']:.3f} | {amx_ms} "
            f"| {r['speedup_vs_dense_vnni']:.2f} | {vs_amx} | {r['cpu_per_wall']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", nargs="*", type=int, help="M K N triples (default: 8 768 3072, 128 768 3072)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md (e.g. bench/sparsity_nm)")
    args = parser.parse_args(argv)
    shape = args.shape or [8, 768, 3072, 128, 768, 3072]
    rows = []
    for i in range(0, len(shape), 3):
        row = bench(*shape[i : i + 3])
        try:  # the dense GEMM fxpress picks on an AMX CPU, for reference
            from fxpress.backends.tvm.isa.x86_amx.bench import microbench as amx_microbench

            m, k, n = shape[i : i + 3]
            row["dense_amx_ms"] = float(amx_microbench(m, k, n, threads=1)["ms"])
        except Exception as exc:  # no AMX here
            row["dense_amx_ms"] = None
            row["amx_note"] = str(exc)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out is not None:
        write(rows, args.out)


if __name__ == "__main__":
    main()
