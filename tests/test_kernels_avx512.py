"""fp32 kernels on AVX-512: every conv, matmul and pool the AVX2 rules schedule gets a 16-lane schedule too.

Each case is lowered for the ``x86-avx512`` preset (a cross build where the
host lacks AVX-512) and checked structurally: fxpress's rule scheduled the
kernel (not TVM's default loops), its multiply-accumulate block is vectorized
at 16 lanes (8 where only 8 divide the channels) with no predicate in it (TVM
runs a vector loop with a per-lane predicate as scalar code: 20x slower on
ResNet-18), and its machine code has FMAs on zmm (ymm) registers. Where the
host has avx512f, the compiled model also runs against eager PyTorch (fp32:
1e-4 relative to the output scale); elsewhere that part skips, naming the flag.
No test here measures time.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import s_tir

import fxpress
from fxpress.backends.tvm.block_sparse import block_lanes
from fxpress.backends.tvm.compile import import_graph
from fxpress.backends.tvm.kernels.conv2d import conv_panel
from fxpress.backends.tvm.kernels.matmul import matmul_panel
from fxpress.backends.tvm.lower import lowering_stages, schedule_rules
from fxpress.backends.tvm.targets import TargetSpec, resolve_target
from fxpress.backends.tvm.te_pool import COLS, ROWS
from fxpress.runtime.cpu import host_cpu_flags

pytestmark = pytest.mark.tvm

PRESET = "x86-avx512"
KERNEL_RULES = {"CPUConv2d", "CPUMatmul", "CPUSeparablePool"}


class Conv(nn.Module):
    """conv (+ bias) + ReLU: the epilogue fused into the kernel."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Residual(nn.Module):
    """conv + residual add + ReLU, as in a ResNet block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + x)


class Attention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v


class Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, 3, 2, 1)


# name -> (model, inputs, vector lanes of the kernel)
CASES: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], int]] = {
    "conv3x3_residual": (Residual(32), (torch.randn(1, 32, 14, 14),), 16),
    "conv1x1": (Conv(32, 64, 1), (torch.randn(1, 32, 28, 28),), 16),
    "conv3x3_stride2_odd": (Conv(16, 32, 3, 2), (torch.randn(1, 16, 17, 17),), 16),
    "conv3x3_7x7": (Conv(64, 64, 3), (torch.randn(1, 64, 7, 7),), 16),
    "stem7x7": (Conv(3, 64, 7, 2), (torch.randn(1, 3, 32, 32),), 16),
    "conv_24_channels": (Conv(16, 24, 3), (torch.randn(1, 16, 14, 14),), 8),
    "pointwise_24_channels": (Conv(48, 24, 1), (torch.randn(1, 48, 28, 28),), 16),
    "conv_10_channels": (Conv(16, 10, 3), (torch.randn(2, 16, 9, 9),), 16),
    "depthwise3x3": (Conv(32, 32, 3, groups=32), (torch.randn(1, 32, 14, 14),), 16),
    "depthwise5x5_stride2": (Conv(32, 32, 5, 2, groups=32), (torch.randn(1, 32, 15, 15),), 16),
    "depthwise3x3_7x7": (Conv(48, 48, 3, groups=48), (torch.randn(2, 48, 7, 7),), 16),
    "grouped": (Conv(32, 64, 3, groups=4), (torch.randn(1, 32, 16, 16),), 16),
    "dense": (nn.Linear(96, 192), (torch.randn(8, 96),), 16),
    "dense_one_row": (nn.Linear(64, 1000), (torch.randn(1, 64),), 16),
    "dense_ragged": (nn.Linear(64, 40), (torch.randn(5, 64),), 16),
    "batch_matmul": (Attention(), tuple(torch.randn(2, 4, 32, 64) for _ in range(3)), 16),
    "max_pool": (Pool(), (torch.randn(1, 8, 32, 32),), 16),
}


def _spec() -> TargetSpec:
    return resolve_target(PRESET, num_threads=1, cross=True)


def _scheduled(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, tuple[str | None, tvm.tirx.PrimFunc]]:
    """name -> (the rule that scheduled it, the scheduled function) for every kernel of the model's module."""
    spec = _spec()
    mod, _, _ = import_graph(fxpress.capture(model.eval(), inputs), spec)
    for name, stage in lowering_stages(spec):
        if name == "schedule":
            break
        mod = stage(mod)
    found: dict[str, tuple[str | None, tvm.tirx.PrimFunc]] = {}
    with spec.target:
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc) or "transform_params" in gv.name_hint:
                continue
            found[gv.name_hint] = (None, func)
            for rule in schedule_rules(spec):
                sch = rule.apply(func, spec.target, False)
                if sch is not None:
                    found[gv.name_hint] = (type(rule).__name__, sch.mod["main"])
                    break
    return found


def _kernel_blocks(func: tvm.tirx.PrimFunc) -> dict[str, tuple[list[int], list[str]]]:
    """The multiply-accumulate (``*_update``) blocks and pool passes: name -> (its vector loops' extents, predicates).

    A predicate that reads a vector loop's variable makes TVM run that loop
    scalar; one on an unrolled column (a width the tile does not divide) only
    skips that column.
    """
    sch = s_tir.Schedule(func)
    out = {}
    pending = list(sch.get_child_blocks(sch.get_sblock("root")))
    while pending:
        block = pending.pop()
        pending.extend(sch.get_child_blocks(block))
        stmt = sch.get(block)
        if stmt.name_hint.endswith("_update") or stmt.name_hint in (ROWS, COLS):
            loops = [sch.get(lp) for lp in sch.get_loops(block)]
            vector_loops = [lp for lp in loops if lp.kind == tvm.tirx.ForKind.VECTORIZED]
            text = re.split(r"(?=with T\.sblock\()", func.script())
            body = next(c for c in text if c.startswith(f'with T.sblock("{stmt.name_hint}")'))
            names = [lp.loop_var.name for lp in vector_loops]
            wheres = [
                ln for ln in body.splitlines() if "T.where" in ln and any(re.search(rf"\b{n}\b", ln) for n in names)
            ]
            out[stmt.name_hint] = ([int(lp.extent) for lp in vector_loops], wheres)
    return out


def _assembly(func: tvm.tirx.PrimFunc) -> str:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "fx_avx512_probe")}), target=_spec().target)
    mod = lib.mod.imports[0] if lib.mod.imports else lib.mod
    return mod.inspect_source("asm")


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_is_a_16_lane_schedule(case: str) -> None:
    model, inputs, lanes = CASES[case]
    found = _scheduled(model, inputs)
    kernels = {name: f for name, (rule, f) in found.items() if rule in KERNEL_RULES}
    assert kernels, f"no conv/matmul/pool rule scheduled any function of {case}: {found}"
    unscheduled = [n for n, (rule, _) in found.items() if rule is None]
    assert not unscheduled, f"left to TVM's default loops: {unscheduled}"
    register = "zmm" if lanes == 16 else "ymm"
    for name, func in kernels.items():
        blocks = _kernel_blocks(func)
        assert blocks, f"{name}: no multiply-accumulate block found\n{func.script()}"
        for block, (vectors, wheres) in blocks.items():
            pool = block in (ROWS, COLS)
            assert vectors and (pool or vectors[-1] == lanes), f"{name}.{block}: not {lanes}-lane vectors: {vectors}"
            assert not wheres, f"{name}.{block}: a vector loop with a per-lane predicate (runs scalar): {wheres}"
        if any(b.endswith("_update") for b in blocks):
            hot = _hottest_block(_assembly(func), register)
            assert hot, f"{name}: no FMA on {register} registers"
            # an accumulator tile the vectors cannot address as registers gathers its lanes one by one for every FMA
            # (the write-back of a channel-vector tile to NCHW may scatter: once per tile, not per FMA)
            moves = re.findall(r"\b(vinsertps|vextractps|vgather\w+)\b", hot)
            assert not moves, f"{name}: lane-by-lane moves in the FMA loop: {sorted(set(moves))}"


def _hottest_block(asm: str, register: str) -> str:
    """The assembly basic block with the most FMAs on `register` (zmm, ymm) registers: the kernel's inner loop."""
    blocks = re.split(r"\n(?=\.?\w+:)", asm)
    pattern = rf"vfmadd\d+ps\s+[^\n]*%{register}"
    best = max(blocks, key=lambda b: len(re.findall(pattern, b)))
    return best if re.search(pattern, best) else ""


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_eager(case: str) -> None:
    if "avx512f" not in host_cpu_flags():
        pytest.skip("the host CPU lacks avx512f: the x86-avx512 build is checked for structure only")
    model, inputs, _ = CASES[case]
    model = model.eval()
    compiled = fxpress.compile(fxpress.capture(model, inputs), target=PRESET, num_threads=1)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    out = compiled(*[x.numpy() for x in inputs])
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_wide_and_avx2_panels() -> None:
    """AVX-512 panels divide the channels (no predicated vector); the AVX2 (8-lane) panels are as they were."""
    wide = _spec().target
    avx2 = resolve_target("x86-avx2", num_threads=1, cross=True).target
    assert [conv_panel(c, wide) for c in (64, 96, 144, 16, 24, 40, 10)] == [32, 32, 48, 16, 24, 8, 16]
    assert [conv_panel(512, wide, w) for w in (14, 7)] == [32, 16]  # rows under 8 wide: 1 vector, tiles of 2 rows
    assert [conv_panel(c, avx2) for c in (64, 96, 24, 10)] == [16, 16, 16, 16]
    assert [matmul_panel(n, wide) for n in (384, 1536, 64, 16, 1000)] == [48, 48, 32, 16, 48]
    assert [matmul_panel(n, avx2) for n in (384, 64, 1000)] == [16, 16, 16]


def test_block_sparse_lanes() -> None:
    """8-row blocks run on 8-lane vectors where the register holds 16; blocks that are not whole vectors stay dense."""
    assert [block_lanes(r, 16) for r in (16, 32, 8, 24, 4, 1)] == [16, 16, 8, 8, 0, 0]
    assert [block_lanes(r, 8) for r in (16, 8, 4)] == [8, 8, 0]


class Block(nn.Module):
    """An inverted residual without BatchNorm: 1x1 expand, depthwise 3x3, 1x1 project (no epilogue), residual."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(16, 48, 1)
        self.depthwise = nn.Conv2d(48, 48, 3, 1, 1, groups=48)
        self.project = nn.Conv2d(48, 16, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(x))))
        return x + self.project(y)


def test_dynamic_batch_keeps_the_kernels() -> None:
    """A symbolic batch: every conv still gets a kernel rule (only symbolic H/W falls back), and values match.

    (With a symbolic batch the 1x1 convs are not packed; the matmul rule takes them, as on AVX2.)
    """
    model = Block().eval()
    x = torch.randn(2, 16, 12, 12)
    graph = fxpress.capture(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    spec = _spec()
    mod, _, _ = import_graph(graph, spec)
    for name, stage in lowering_stages(spec):
        if name == "schedule":
            break
        mod = stage(mod)
    with spec.target:
        convs = {gv.name_hint: f for gv, f in mod.functions.items() if "conv" in gv.name_hint}
        rules = [r for r in schedule_rules(spec) if type(r).__name__ in KERNEL_RULES]
        scheduled = {n for n, f in convs.items() if any(r.apply(f, spec.target, False) is not None for r in rules)}
    assert len(convs) == 3 and scheduled == set(convs), (sorted(convs), sorted(scheduled))
    if "avx512f" not in host_cpu_flags():
        pytest.skip("the host CPU lacks avx512f: the x86-avx512 build is checked for structure only")
    compiled = fxpress.compile(graph, target=PRESET, num_threads=1)
    for batch in (1, 3):
        x = torch.randn(batch, 16, 12, 12)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(compiled(x.numpy()), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
