"""What fxpress's CPU schedule rules share: the fallback contract and small helpers.

A rule derives `FxpressCPURule` and implements ``schedule(func, target)``,
returning a `Schedule` or None when the function is not its kind. Any
exception inside it is logged and turned into None: a schedule rule must never
break a build, the next rule (or TVM's default lowering) takes the function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

log = logging.getLogger(__name__)

# Below this many multiply-adds a kernel runs on the calling thread: waking the
# pool costs tens of microseconds, more than such a kernel takes (digits CNN).
PARALLEL_MIN_MACS = 1 << 21
# The same for element-wise kernels, counted in output elements.
PARALLEL_MIN_ELEMENTS = 16384
# Storage scope of a register tile's accumulator (cache_write). TVM 0.27's host
# lowering keeps only small *global* allocations on the stack, where LLVM turns
# them into registers; a "local" one becomes a TVMBackendAllocWorkspace and
# free call pair per tile, which cost the int8 GEMMs half their speed at K=384.
ACC_SCOPE = "global"


class FxpressCPURule(CPUScheduleRule):
    """A dlight CPU rule that falls back (returns None) instead of failing."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self.schedule(func, target)
        except Exception as exc:  # a rule must never break the build
            log.debug("%s skipped a function: %s", type(self).__name__, exc)
            return None

    def schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        raise NotImplementedError


class Guarded(CPUScheduleRule):
    """One of dlight's own CPU rules, made to fall back like ours: its exception becomes None.

    (dlight's ``cpu.GEMV`` asserts on a batched matmul with a reduction of length 1, ``[8, 1, 1] @
    [8, 1, 16]``, attention over a single token in Levit and MobileViT, and failed the whole build.)
    """

    def __init__(self, rule: CPUScheduleRule) -> None:
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as exc:
            log.debug("%s skipped a function: %s", type(self.rule).__name__, exc)
            return None

    def is_target_available(self, target: Target) -> bool:
        return bool(self.rule.is_target_available(target))


@dataclass(frozen=True)
class Kernel:
    """A PrimFunc's one reduction block (the kernel) and the blocks around it."""

    sch: s_tir.Schedule
    main: s_tir.schedule.SBlockRV
    before: list[s_tir.schedule.SBlockRV]  # prologue blocks, in order
    after: list[s_tir.schedule.SBlockRV]  # epilogue blocks, in order


def find_kernel(
    func: tirx.PrimFunc, accept: Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV], bool]
) -> Kernel | None:
    """The `Kernel` of `func` if it has exactly one reduction block and `accept` takes it."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    reductions = [b for b in infos if not b.is_injective()]
    if len(reductions) != 1 or not accept(sch, reductions[0].block_rv):
        return None
    blocks = [b.block_rv for b in infos]
    position = blocks.index(reductions[0].block_rv)
    before = _inline_side_inputs(sch, blocks[:position], blocks[position])
    return Kernel(sch, blocks[position], before, blocks[position + 1 :])


def _inline_side_inputs(
    sch: s_tir.Schedule, before: list[s_tir.schedule.SBlockRV], main: s_tir.schedule.SBlockRV
) -> list[s_tir.schedule.SBlockRV]:
    """Inline the blocks before the kernel that only its epilogue reads; return the kernel's own prologue.

    (A residual's dequantize fused ahead of a conv + add: left in place, it would
    keep the add from moving under the kernel's tile.)
    """
    needed = {r.source.name for r in sch.get(main).reads}
    prologue = []
    for block in reversed(before):
        writes = {w.source.name for w in sch.get(block).writes}
        if writes & needed:
            needed |= {r.source.name for r in sch.get(block).reads}
            prologue.append(block)
        else:
            sch.compute_inline(block)
    return prologue[::-1]


def vector_lanes(target: Target, bits: int = 32) -> int:
    """Lanes of the widest vector register the target's CPU really has.

    (``llvm_get_vector_width`` answers 512 for AVX2-only CPUs such as znver3.)
    """
    if llvm_cpu_has_features(["avx512f"], target):
        width = 512
    elif llvm_cpu_has_features(["avx2"], target) or llvm_cpu_has_features(["avx"], target):
        width = 256
    else:
        width = 128
    return max(width // bits, 1)


def is_multiply_accumulate(stmt: tirx.Stmt, kinds: str | tuple[str, ...]) -> bool:
    """A float32 (or int32-accumulating) block ``C[..] = C[..] + A[..] * B[..]`` with iterators `kinds` (``SSR``)."""
    got = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in stmt.iter_vars)
    if got not in ((kinds,) if isinstance(kinds, str) else kinds):
        return False
    if len(stmt.writes) != 1 or stmt.writes[0].source.dtype not in ("float32", "int32"):
        return False
    body = stmt.body
    return (
        isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add) and isinstance(body.value.b, tirx.Mul)
    )


def work(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int | None:
    """The block's iteration count (multiply-adds for a matmul/conv), None if symbolic."""
    total = 1
    for loop in sch.get_loops(block):
        extent = get_extent(sch, loop)
        if not isinstance(extent, int):
            return None
        total *= extent
    return total


def parallel_if_worth_it(
    sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, amount: int | None, minimum: int = PARALLEL_MIN_MACS
) -> None:
    """Parallelize `loop` unless the kernel's work is known to be below `minimum`."""
    if amount is None or amount >= minimum:
        sch.parallel(loop)


def attach_epilogue(
    sch: s_tir.Schedule,
    producers: list[s_tir.schedule.SBlockRV],
    later: list[s_tir.schedule.SBlockRV],
    loop: s_tir.schedule.LoopRV,
) -> list[s_tir.schedule.SBlockRV]:
    """Move the blocks after the kernel that consume its result under `loop`; inline the rest.

    `producers` are the kernel's blocks (the reduction and its write-back).
    A block that reads none of their outputs (directly or through an already
    moved block), such as the per-channel ``sqrt(var + eps)`` of an unfolded
    BatchNorm, must not be moved under `loop`: its region would be inferred
    from the kernel's tile and only part of it computed. It is inlined into its
    consumers instead; if that is impossible the rule gives up (raises), and
    the function falls back to the next rule. A block that writes more
    elements than it reads of the kernel's result (a pad, a concat with another
    input) stays after the kernel, whole, and so does everything reading it:
    moved under `loop`, only the elements some tile's region maps to would be
    written (a conv followed by ``ZeroPad2d((0, 1, 0, 1))`` returned NaN in the
    border). Returns the moved blocks.
    """
    produced = {w.source.name: _numel(w.source) for p in producers for w in sch.get(p).writes}
    kept: set[str] = set()
    moved = []
    for block in later:
        stmt = sch.get(block)
        reads = {r.source.name for r in stmt.reads}
        writes = {w.source.name: _numel(w.source) for w in stmt.writes}
        if reads & kept or (
            reads & set(produced) and max(writes.values()) > min(produced[r] for r in reads & set(produced))
        ):
            kept |= set(writes)  # a pad or concat writes elements no tile produces: it runs after the kernel, whole
        elif reads & set(produced):
            sch.reverse_compute_at(block, loop, preserve_unit_loops=True)
            produced |= writes
            moved.append(block)
        else:
            sch.compute_inline(block)
    return moved


def _numel(buffer: tirx.Buffer) -> int:
    """Elements of `buffer` (a symbolic dimension counts as 1: the comparison above is of static shapes)."""
    total = 1
    for d in buffer.shape:
        total *= int(d) if isinstance(d, tirx.IntImm) else 1
    return total
