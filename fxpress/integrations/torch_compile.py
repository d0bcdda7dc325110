"""``torch.compile(model, backend="fxpress", options={...})``: each subgraph dynamo captures, compiled by fxpress.

    fast = torch.compile(model, backend="fxpress", options={"pipeline": "int8", "calibration": batches})
    fast(x)    # the first call captures, compresses and compiles; later calls run the compiled code

The backend is registered with torch by the ``torch_dynamo_backends`` entry point in pyproject.toml, so the
name works without importing fxpress first (`register` does the same by hand where fxpress is not installed).

Options (each optional; another name, or a bad value, is an error of the first call, never a fallback):

- ``pipeline``: pipeline text (``"default"``, ``"int8"``, ``"fold-bn,prune-channels{ratio=0.5}"``), a pass
  object or a list of them; parsed and order-checked before anything is captured (`PipelineError`).
  Default ``"default"``.
- ``target``: ``"x86"`` (default), an x86 preset this host runs, or ``"eager"`` (the compressed graph run by
  PyTorch). Cross targets (arm, cuda) are refused: torch.compile runs the model here (`TargetError`).
- ``num_threads``: the TVM thread pool's size (default: every usable CPU).
- ``calibration``: batches for the pipeline's ``calibrate`` passes that carry no data of their own (pipeline
  text cannot), each a tuple of tensors in the order of the compiled function's arguments (a model's
  ``forward``), or a dict by argument name. A subgraph whose inputs they do not match (after a graph break)
  is calibrated on the inputs of its first call, and so is every subgraph when none are given; a
  `CalibrationWarning` says so.
- ``tuning``: as `fxpress.compile` (``"auto"``: replay `fxpress tune`'s records when there are any).

How a subgraph is compiled (dynamo_graph.py): dynamo hands over a torch-level GraphModule whose
placeholders are the user's inputs, the module's parameters and buffers (lifted to inputs), and symbolic
sizes. The parameters and buffers become frozen weights of a wrapper module (so passes can fold, prune and
quantize them), a symbolic size is read from the input dimension it stands for, and the wrapper is captured
with `fxpress.capture` (torch.export, ATen level), run through the pipeline and compiled. The returned
function passes the user's inputs to the compiled module and returns torch tensors in the structure dynamo
expects.

Weights are frozen at compile time (like inductor's ``freezing``): when a parameter or buffer has changed
since (an optimizer step, ``load_state_dict``), calls run the subgraph in eager PyTorch, with one warning,
until ``torch._dynamo.reset()``. Outputs carry no autograd history: this is an inference backend.

Dynamic shapes: a subgraph that dynamo marks dynamic (a second input shape, or ``dynamic=True``) is captured
with those dimensions dynamic (``Dim.AUTO``), optimized once (one calibration) and compiled once for every
size; torch.export specializes a dimension the model fixes, and a call with another size then runs eagerly,
with one warning. fxpress's fast kernels (AMX / VNNI tiles, packed panels) need static shapes: a symbolic
batch made int8 MiniLM at 8 x 128 run 4.9 s instead of 63 ms. So each new concrete input shape of a dynamic
subgraph (up to `MAX_SPECIALIZED`) gets its own static build of the same optimized graph, compiled on the
first call with that shape (seconds, like the first call); further shapes run the symbolic build.

Falls back to eager PyTorch (``gm.forward``), with one `FallbackWarning` naming the reason, when a subgraph
cannot be captured, a pass fails on it or it cannot be compiled, and when it mutates its weights or draws
random numbers (a model in training mode: call ``model.eval()``).
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxpress.errors import FxpressError, InputError, PerformanceWarning, PipelineError, TargetError
from fxpress.integrations.dynamo_graph import (
    Layout,
    Unsupported,
    check_inference,
    dynamic_shapes,
    layout,
    outputs_spec,
    subgraph_module,
    tidy_module_paths,
)
from fxpress.passes.base import Pass

log = logging.getLogger(__name__)

NAME = "fxpress"
OPTIONS = ("pipeline", "target", "num_threads", "calibration", "tuning")
_WHERE = "torch.compile(backend='fxpress')"


class OptionError(FxpressError):
    """An option of ``torch.compile(..., backend="fxpress", options=...)`` is unknown or has a bad value."""


class FallbackWarning(UserWarning):
    """A subgraph runs in eager PyTorch because fxpress could not compile it (the message says why)."""


class CalibrationWarning(UserWarning):
    """A subgraph was calibrated on the inputs of its first call, not on ``options["calibration"]``."""


Batch = tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Options:
    """The backend's options, checked (see the module docstring)."""

    passes: tuple[Pass, ...]
    target: str = "x86"
    num_threads: int | None = None
    calibration: tuple[Batch, ...] | None = field(default=None, compare=False, repr=False)
    tuning: bool | str | os.PathLike[str] | None = "auto"


def _suggest(word: str) -> str:
    near = difflib.get_close_matches(word, OPTIONS, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _passes(pipeline: Any) -> tuple[Pass, ...]:
    from fxpress.passes.pipeline import as_passes, check_order
    from fxpress.passes.registry import REGISTRY

    if not isinstance(pipeline, str | Pass | list | tuple):
        raise PipelineError(
            f"{_WHERE}: options['pipeline'] must be pipeline text (e.g. 'default', 'int8', "
            f"'fold-bn,fold-constants,dce'), a pass object or a list of them, got {type(pipeline).__name__}"
        )
    try:
        passes = as_passes(pipeline, REGISTRY)
        check_order(passes, frozenset(), REGISTRY)
    except PipelineError as exc:
        raise PipelineError(f"{_WHERE}: options['pipeline'] is not a valid pipeline: {exc}") from exc
    return tuple(passes)


def _target(target: Any, num_threads: int | None) -> str:
    if target == "eager":
        return target
    from fxpress.backends.tvm.targets import TARGETS, resolve_target

    if not isinstance(target, str) or target not in TARGETS:
        raise TargetError(f"{_WHERE}: unknown options['target'] {target!r}; valid targets: eager, {', '.join(TARGETS)}")
    if not resolve_target(target, num_threads=num_threads).host_runnable:  # raises when the host lacks the ISA
        raise TargetError(
            f"{_WHERE}: target {target!r} builds for another machine, and torch.compile runs the model here; "
            "use 'x86' (or 'eager'), or build an artifact for that device with fxpress.compile(...).save(dir)"
        )
    return target


def _calibration(batches: Any) -> tuple[Batch, ...] | None:
    if batches is None:
        return None
    if isinstance(batches, torch.Tensor | str | bytes | Mapping) or not isinstance(batches, Sequence):
        raise OptionError(
            f"{_WHERE}: options['calibration'] must be a list of batches, each a tuple of input tensors "
            f"or a dict of them by argument name, got {type(batches).__name__}"
        )
    out: list[Batch] = []
    for i, batch in enumerate(batches):
        items = batch.values() if isinstance(batch, Mapping) else batch
        if isinstance(batch, torch.Tensor):
            batch, items = (batch,), (batch,)
        if not isinstance(batch, Mapping | tuple | list):
            raise OptionError(
                f"{_WHERE}: options['calibration'][{i}] must be a tuple of tensors (one per input) or a dict "
                f"of tensors by argument name, got {type(batch).__name__}"
            )
        bad = next((t for t in items if not isinstance(t, torch.Tensor)), None)
        if bad is not None:
            raise OptionError(
                f"{_WHERE}: options['calibration'][{i}] holds a {type(bad).__name__}; a batch holds tensors only"
            )
        out.append(dict(batch) if isinstance(batch, Mapping) else tuple(batch))
    if not out:
        raise OptionError(f"{_WHERE}: options['calibration'] is empty; give at least one batch, or leave it out")
    return tuple(out)


def parse_options(options: Mapping[str, Any] | None) -> Options:
    """Check `options` (see the module docstring); raises `OptionError`, `PipelineError` or `TargetError`."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise OptionError(f"{_WHERE}: options must be a dict, got {type(options).__name__}")
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        k = str(unknown[0])
        raise OptionError(f"{_WHERE}: unknown option {k!r}{_suggest(k)}; the options are {', '.join(OPTIONS)}")
    threads = options.get("num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise OptionError(f"{_WHERE}: options['num_threads'] must be a positive int or None, got {threads!r}")
    tuning = options.get("tuning", "auto")
    if tuning is not None and not isinstance(tuning, bool | str | os.PathLike):
        raise OptionError(f"{_WHERE}: options['tuning'] must be 'auto', a path, True or False, got {tuning!r}")
    return Options(
        passes=_passes(options.get("pipeline", "default")),
        target=_target(options.get("target", "x86"), threads),
        num_threads=threads,
        calibration=_calibration(options.get("calibration")),
        tuning=tuning,
    )


# ---- calibration -----------------------------------------------------------------------------------------


def _argument_names() -> list[str] | None:
    """The compiled function's argument names (``self`` left out), when dynamo's tracing context tells them."""
    try:
        code = torch._guards.TracingContext.get().traced_code[0]
    except Exception:  # no tracing context (a direct call, not from dynamo), or torch moved it
        return None
    names = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    return names[1:] if names[:1] == ["self"] else names


def _match(batch: Batch, names: list[str], arguments: list[str] | None) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, Mapping):
        missing = [n for n in names if n not in batch]
        if missing:
            raise InputError(f"a calibration batch lacks {missing} (it has {sorted(batch)})")
        return tuple(batch[n] for n in names)
    if arguments is None or not set(names) <= set(arguments):
        if len(batch) != len(names):
            raise InputError(f"a calibration batch has {len(batch)} tensors, the subgraph takes {len(names)}")
        return tuple(batch)
    if len(batch) != len(arguments):
        raise InputError(f"a calibration batch has {len(batch)} tensors, the function takes {arguments}")
    return tuple(batch[arguments.index(n)] for n in names)


def _check_batch(batch: tuple[torch.Tensor, ...], inputs: Sequence[torch.Tensor], lay: Layout) -> None:
    for name, dims, x, ref in zip(lay.names, lay.dynamic, batch, inputs, strict=True):
        static = [d for d in range(ref.ndim) if d not in dims]
        if x.dtype != ref.dtype or x.ndim != ref.ndim or any(x.shape[d] != ref.shape[d] for d in static):
            raise InputError(
                f"calibration input {name!r} is {x.dtype}{list(x.shape)}, the subgraph takes {ref.dtype}{list(ref.shape)}"
            )


def calibration_batches(
    opts: Options, lay: Layout, inputs: tuple[torch.Tensor, ...]
) -> tuple[list[tuple[torch.Tensor, ...]], str | None]:
    """(the batches to calibrate this subgraph on, why they are its first call's inputs, or None)."""
    if opts.calibration is None:
        return [inputs], "options['calibration'] gives no batches"
    arguments = _argument_names()
    try:
        batches = [_match(b, lay.names, arguments) for b in opts.calibration]
        for b in batches:
            _check_batch(b, inputs, lay)
    except InputError as exc:
        return [inputs], f"options['calibration'] does not fit this subgraph's inputs {lay.names}: {exc.message}"
    return batches, None


def _with_data(passes: Sequence[Pass], batches: list[tuple[torch.Tensor, ...]]) -> list[Pass]:
    from fxpress.passes.calibrate import Calibrate

    return [replace(p, data=batches) if isinstance(p, Calibrate) and p.data is None else p for p in passes]


# ---- compile and run -------------------------------------------------------------------------------------


MAX_SPECIALIZED = 8  # static builds per dynamic subgraph, one per concrete input shape


class CompiledSubgraph:
    """Runs a compiled subgraph on dynamo's arguments; eager PyTorch where its weights changed since compile.

    With `graph` and `opts` (a dynamic subgraph), each new input shape gets a static build (module doc).
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        module: Any,
        lay: Layout,
        spec: pytree.TreeSpec,
        graph: Any = None,
        opts: Options | None = None,
    ) -> None:
        self.gm, self.module, self.layout, self.spec = gm, module, lay, spec
        self.frozen = [(i, t, t._version) for i, (_, t) in lay.weights.items()]
        self._warned = False
        self.graph, self.opts = graph, opts
        self.static: dict[tuple[tuple[int, ...], ...], Any] = {}

    def _specialized(self, inputs: list[Any]) -> Any:
        """The static build for these inputs' shapes (compiled now if new); the symbolic build past the limit."""
        if self.graph is None or self.opts is None:
            return self.module
        key = tuple(tuple(x.shape) for x in inputs)
        if key in self.static:
            return self.static[key]
        if len(self.static) >= MAX_SPECIALIZED:
            return self.module
        import fxpress
        from fxpress.ir.graph import Graph

        g = self.graph
        static = Graph(g.gm, tuple(x.detach() for x in inputs), properties=g.properties, trace=g.trace,
                       model_name=g.model_name)  # fmt: skip
        try:
            with torch._guards.tracing(None):
                module = fxpress.compile(
                    static, self.opts.target, num_threads=self.opts.num_threads, tuning=self.opts.tuning
                )
        except FxpressError as exc:  # keep the symbolic build for this shape
            log.info("no static build for shapes %s: %s", key, exc)
            module = self.module
        self.static[key] = module
        log.info("compiled a static build of a dynamic subgraph for input shapes %s", key)
        return module

    def _stale(self, args: Sequence[Any]) -> bool:
        return any(args[i] is not t or t._version != v for i, t, v in self.frozen)

    def _eager(self, args: Sequence[Any], why: str) -> Any:
        if not self._warned:
            self._warned = True
            warnings.warn(f"{_WHERE}: running a subgraph in eager PyTorch: {why}", FallbackWarning, stacklevel=3)
        return self.gm(*args)

    def __call__(self, *args: Any) -> Any:
        if self._stale(args):
            return self._eager(args, "its weights changed since it was compiled (call torch._dynamo.reset())")
        inputs = [args[i] for i in self.layout.inputs]
        try:
            out = self._specialized(inputs)(*inputs)
        except InputError as exc:  # a size torch.export specialized, which dynamo left dynamic
            return self._eager(args, f"the compiled subgraph does not take these inputs: {exc.message}")
        flat = list(out) if isinstance(out, tuple | list) else [out]
        return pytree.tree_unflatten(flat, self.spec)


def compile_subgraph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], opts: Options) -> CompiledSubgraph:
    """Capture, compress and compile one dynamo subgraph; raises `Unsupported` or an `FxpressError` if it cannot."""
    import fxpress

    lay = layout(gm, example_inputs)
    spec = outputs_spec(gm)
    inputs = tuple(example_inputs[i].detach() for i in lay.inputs)
    passes: list[Pass] = list(opts.passes)
    if any(p.name == "calibrate" and getattr(p, "data", None) is None for p in passes):
        batches, why = calibration_batches(opts, lay, inputs)  # reads dynamo's tracing context
        if why is not None:
            warnings.warn(
                f"{_WHERE}: calibrating a subgraph on the inputs of its first call only: {why}",
                CalibrationWarning,
                stacklevel=3,
            )
        passes = _with_data(passes, batches)
    # outside dynamo's tracing context: torch.export and fxpress's shape propagation find their own fake mode
    with torch._guards.tracing(None):
        graph = fxpress.capture(subgraph_module(gm, lay), inputs, dynamic_shapes=dynamic_shapes(lay))
        graph.model_name = "torch.compile subgraph"
        tidy_module_paths(graph)
        check_inference(graph)
        graph = fxpress.optimize(graph, passes)
        with warnings.catch_warnings():  # a dynamic subgraph's calls take static builds (`_specialized`)
            warnings.simplefilter("ignore", PerformanceWarning)
            module = fxpress.compile(graph, opts.target, num_threads=opts.num_threads, tuning=opts.tuning)
    log.info("compiled a subgraph (%d ops) for %s with %s", graph.num_ops, opts.target, graph.pipeline)
    if any(lay.dynamic):
        return CompiledSubgraph(gm, module, lay, spec, graph, opts)
    return CompiledSubgraph(gm, module, lay, spec)


def fxpress_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> Callable[..., Any]:
    """The dynamo backend ``"fxpress"`` (see the module docstring): a compiled subgraph, or `gm.forward`."""
    if mode not in (None, "default"):
        raise OptionError(
            f"{_WHERE}: mode={mode!r} is an inductor setting; leave mode out and choose the compression "
            "with options={'pipeline': ...}"
        )
    opts = parse_options(options)
    try:
        return compile_subgraph(gm, example_inputs, opts)
    except (Unsupported, FxpressError) as exc:
        ops = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
        reason = str(exc).strip() or "(no message)"
        warnings.warn(
            f"{_WHERE}: running a subgraph ({ops} ops) in eager PyTorch: {type(exc).__name__}: {reason}",
            FallbackWarning,
            stacklevel=2,
        )
        log.info("fallback to eager for a subgraph", exc_info=exc)
        return gm.forward


def register() -> None:
    """Register the backend with dynamo by hand (where fxpress is used without being installed by pip)."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if NAME not in _COMPILER_FNS:
        register_backend(fxpress_backend, name=NAME)
