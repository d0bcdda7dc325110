"""The lowering pipeline: an explicit, ordered list of named Relax stages.

Like the pass pipeline, lowering is data: `lowering_stages(spec)` returns the
stages in the order they run, each a name and a TVM pass, so a schedule rule
or a new rewrite plugs in as one more entry and `fxpress compile --timing`
can report each stage. The sequence follows TVM's CPU pipeline (legalize,
fuse, lower dataflow, plan memory, lower to the VM) with fxpress's choices:

1. ``decompose``: eval-mode BatchNorm and friends into plain arithmetic
   (the importer emits BN in training form otherwise);
2. ``fast-math``: GELU, softmax, exp, erf, tanh as vectorizable
   approximations (libm calls would keep those loops scalar);
3. ``add-norm``: a residual add fused into the layer norm that reads it
   (add_norm.py; FuseOps never puts an element-wise producer into a reduction),
   then ``dead-code`` drops the bindings such rewrites leave unread;
4. ``legalize`` .. ``fuse-tir``: high-level ops to TIR, fused, with ``cse``
   after legalization merging identical calls (Q, K and V each shift the same
   int8 activation to uint8: once, which then fuses into its quantize);
5. ``schedule``: `schedule_rules(spec)` applied by dlight to every PrimFunc,
   first match wins: the target ISA's own kernels (isa/: int8 GEMM and conv),
   then the generic ones: fxpress's register-blocked matmul and conv2d,
   row reductions (softmax, layer norm), dlight's GEMV and reduction rules,
   pools, fxpress's injective rule;
6. ``dataflow-lower`` .. ``finalize``: TVM's VM lowering, unchanged.

Parameters are lifted out by ``LiftTransformParams`` before these stages run
(see compile.py), so weight-only work (transposes, later packing) happens once
at compile time and is saved with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
import tvm.s_tir.dlight as dl
from tvm import relax

from fxpress.backends.tvm.add_norm import AddNorm
from fxpress.backends.tvm.dead_bindings import DeadBindings
from fxpress.backends.tvm.fast_math import FastMath
from fxpress.backends.tvm.targets import TargetSpec
from fxpress.progress import enabled, step


def schedule_rules(spec: TargetSpec) -> list[dl.ScheduleRule]:
    """The dlight rules for `spec`, tried in order on every PrimFunc: its ISA's own, then the generic ones."""
    return spec.isa.schedule_rules()


def lowering_stages(spec: TargetSpec, replay: tvm.transform.Pass | None = None) -> list[tuple[str, tvm.transform.Pass]]:
    """The ordered (name, pass) stages that take an imported module to VM code.

    `replay` (`tuning.records.apply_records`) runs as ``apply-records`` right before
    ``schedule``: functions it schedules from tuning records skip the rules.
    """
    t = relax.transform
    return [
        ("decompose", t.DecomposeOpsForInference()),
        ("fast-math", FastMath()),
        ("add-norm", AddNorm()),
        ("dead-code", DeadBindings()),
        ("legalize", t.LegalizeOps()),
        ("cse", tvm.transform.Sequential([t.EliminateCommonSubexpr(call_only=True), t.CanonicalizeBindings()])),
        ("annotate-op-pattern", t.AnnotateTIROpPattern()),
        ("fold-constant", t.FoldConstant()),
        ("fuse-ops", t.FuseOps()),
        ("fuse-tir", t.FuseTIR()),
        *([("apply-records", replay)] if replay is not None else []),
        ("schedule", dl.ApplyDefaultSchedule(*schedule_rules(spec))),
        (
            "dataflow-lower",
            tvm.transform.Sequential(
                [
                    t.RewriteDataflowReshape(),
                    t.ToNonDataflow(),
                    t.RemovePurityChecking(),
                    t.CallTIRRewrite(),
                ]
            ),
        ),
        (
            "finalize",
            tvm.transform.Sequential(
                [
                    t.StaticPlanBlockMemory(),
                    t.LowerAllocTensor(),
                    t.KillAfterLastUse(),
                    t.LowerRuntimeBuiltin(),
                    t.ComputePrimValue(),
                    t.VMShapeLower(),
                    t.AttachGlobalSymbol(),
                ]
            ),
        ),
    ]


def as_pass(
    stages: Sequence[tuple[str, tvm.transform.Pass]],
    timings: dict[str, float] | None = None,
    progress: bool | None = None,
) -> tvm.transform.Pass:
    """One module pass running `stages` in order, recording each one's seconds.

    `progress` (see fxpress.progress; default: ``FXPRESS_PROGRESS``, else a TTY stderr)
    reports each stage on stderr as ``lower i/n <name>`` when it starts and ends.
    """
    import time

    show = enabled(progress)

    @tvm.transform.module_pass(opt_level=0, name="fxpress_lowering")
    def _run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for i, (name, stage) in enumerate(stages, 1):
            start = time.perf_counter()
            with step(f"lower {i}/{len(stages)} {name}", show):
                mod = stage(mod)
            if timings is not None:
                timings[name] = time.perf_counter() - start
        return mod

    return _run
