"""The AMX int8 building blocks: tile config, weight packing, GEMM (asm and bit-exact), tile permission."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from fxpress.backends.tvm.isa.x86_amx import tiles
from fxpress.backends.tvm.isa.x86_amx.bench import amx_host_target, missing_amx_flags
from fxpress.backends.tvm.isa.x86_amx.gemm import GemmShape, amx_gemm, segments
from fxpress.backends.tvm.isa.x86_amx.layout import pack_weight, packed_shape, weight_index_map
from fxpress.errors import TargetError
from fxpress.runtime import amx

# (M, N, K): MiniLM's and a conv's shapes, and ragged ones (M and N edges of 1-31, K steps below 64)
EXACT_SHAPES = [
    (128, 384, 1536),
    (128, 1536, 384),
    (96, 64, 576),
    (1, 16, 4),
    (17, 17, 20),
    (33, 47, 68),
    (100, 64, 108),
    (3, 1000, 8),
]


def _operands(m: int, n: int, k: int, signed_a: bool = False) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(m * 7919 + n * 31 + k)
    lo, hi, dtype = (-128, 128, torch.int8) if signed_a else (0, 256, torch.uint8)
    a = torch.randint(lo, hi, (m, k), generator=g, dtype=dtype)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    return a.numpy(), w.numpy()


def _reference(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (torch.from_numpy(a).long() @ torch.from_numpy(w).long().T).numpy()


def test_tile_config_bytes() -> None:
    cfg = tiles.tile_config([(16, 64), None, (3, 12)])
    assert len(cfg) == 64 and cfg[0] == 1
    assert cfg[16:18] == (64).to_bytes(2, "little") and cfg[48] == 16
    assert cfg[18:20] == b"\0\0" and cfg[49] == 0
    assert cfg[20:22] == (12).to_bytes(2, "little") and cfg[50] == 3
    with pytest.raises(ValueError, match="not a valid AMX tile shape"):
        tiles.tile_config([(17, 64)])


def test_segments_and_k_step() -> None:
    assert [(s.lo, s.hi, s.extents) for s in segments(64)] == [(0, 2, (16, 16))]
    assert [(s.lo, s.hi, s.extents) for s in segments(49)] == [(0, 1, (16, 16)), (1, 2, (16, 1))]
    assert [(s.lo, s.hi, s.extents) for s in segments(7)] == [(0, 1, (7,))]
    assert GemmShape(1, 16, 1536).k_step == 64
    assert GemmShape(1, 16, 108).k_step == 36
    with pytest.raises(ValueError, match="multiple of 4"):
        GemmShape(1, 16, 27)


def test_pack_weight_layout() -> None:
    w = np.arange(40 * 12, dtype=np.int64).reshape(40, 12).astype(np.int8)
    wp = pack_weight(torch.from_numpy(w))
    assert wp.shape == packed_shape(40, 12) == (2, 3, 32, 4)
    for n, k in [(0, 0), (5, 7), (33, 11), (39, 4)]:
        assert wp[weight_index_map(n, k)] == w[n, k]
    assert not wp[1, :, 8:, :].any()  # columns 40..63 are zero padding


@pytest.mark.tvm
def test_weight_index_map_as_layout_transform() -> None:
    """The index map given to relax.op.layout_transform packs exactly like pack_weight (N padded)."""
    _, w = _operands(1, 40, 12)
    bb = relax.BlockBuilder()
    x = relax.Var("w", relax.TensorType((40, 12), "int8"))
    with bb.function("main", [x]):
        out = bb.emit(relax.op.layout_transform(x, weight_index_map, pad_value=0))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(w)).numpy(), pack_weight(w))


@pytest.mark.tvm
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("signed_a", [False, True])
def test_asm_has_tile_instructions(threads: int, signed_a: bool) -> None:
    """A build for a Sapphire Rapids CPU (from any x86 host) emits the tile config and the tile dot product."""
    func = amx_gemm(33, 47, 128, threads=threads, signed_a=signed_a)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": threads})
    lib = tvm.compile(tvm.IRModule({str(func.attrs["global_symbol"]): func}), target=target)
    asm = lib.mod.inspect_source("asm")
    for insn in ("ldtilecfg", "tileloadd", "tilestored", "tilerelease", "tdpbssd" if signed_a else "tdpbusd"):
        assert insn in asm, insn


def test_symbols_are_unique() -> None:
    names = {str(amx_gemm(*s, threads=t).attrs["global_symbol"]) for s in EXACT_SHAPES[:3] for t in (1, 2)}
    assert len(names) == 6
    assert str(amx_gemm(8, 16, 4, name="my_gemm").attrs["global_symbol"]) == "my_gemm"


@pytest.fixture
def amx_host() -> None:
    missing = missing_amx_flags()
    if missing:
        pytest.skip(f"the host CPU lacks {', '.join(missing)} (/proc/cpuinfo): AMX code cannot run here")
    amx.request_amx_permission()


def _run(shapes: list[tuple[int, int, int]], threads: int, signed_a: bool = False) -> None:
    """Build every shape into ONE module (distinct symbols) and check each against torch, bit for bit."""
    funcs = [amx_gemm(m, n, k, threads=threads, signed_a=signed_a) for m, n, k in shapes]
    mod = tvm.IRModule({str(f.attrs["global_symbol"]): f for f in funcs})
    lib = tvm.compile(mod, target=amx_host_target(threads))
    for (m, n, k), func in zip(shapes, funcs, strict=True):
        a, w = _operands(m, n, k, signed_a)
        c = tvm.runtime.tensor(np.full((m, n), -7, np.int32))
        lib[str(func.attrs["global_symbol"])](tvm.runtime.tensor(a), tvm.runtime.tensor(pack_weight(w)), c)
        np.testing.assert_array_equal(c.numpy(), _reference(a, w), err_msg=f"M, N, K = {m}, {n}, {k}")


@pytest.mark.tvm
@pytest.mark.usefixtures("amx_host")
def test_gemm_bit_exact_one_thread() -> None:
    _run(EXACT_SHAPES, threads=1)


@pytest.mark.tvm
@pytest.mark.usefixtures("amx_host")
def test_gemm_bit_exact_two_threads_and_signed() -> None:
    """Split over N (wide shapes) and over M (tall ones), with chunks that own no edge or no block at all."""
    _run([(128, 384, 256), (200, 40, 64), (1, 16, 4), (65, 33, 132)], threads=2)
    _run([(33, 47, 68), (128, 64, 256)], threads=1, signed_a=True)


def test_permission_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amx, "_granted", False)
    monkeypatch.setattr(amx, "_check_host", lambda: None)
    monkeypatch.setattr(amx, "_arch_prctl", lambda code, arg: (-1, errno.EINVAL))
    with pytest.raises(amx.AMXPermissionError, match=r"ARCH_REQ_XCOMP_PERM.*errno 22 \(EINVAL") as info:
        amx.request_amx_permission()
    assert isinstance(info.value, TargetError)
    assert not amx.amx_permission_granted()


def test_permission_requested_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(amx, "_granted", False)
    monkeypatch.setattr(amx, "_check_host", lambda: None)
    monkeypatch.setattr(amx, "_arch_prctl", lambda code, arg: calls.append((code, arg)) or (0, 0))
    amx.request_amx_permission()
    amx.request_amx_permission()
    assert calls == [(0x1023, 18)] and amx.amx_permission_granted()


def test_permission_needs_linux_x86(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amx, "_granted", False)
    monkeypatch.setattr(amx.sys, "platform", "darwin")
    with pytest.raises(amx.AMXPermissionError, match="Linux on x86-64; this host is darwin"):
        amx.request_amx_permission()


def test_permission_module_does_not_import_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import fxpress.runtime.amx; assert sys.modules['torch'] is None"
    subprocess.run([sys.executable, "-c", code], check=True)
