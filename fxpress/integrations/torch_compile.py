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

How a subgraph is compiled: dynamo hands over a torch-level GraphModule whose placeholders are the user's
inputs, the module's parameters and buffers (lifted to inputs), and symbolic sizes. The parameters and
buffers become frozen weights of a wrapper module (so passes can fold, prune and quantize them), a symbolic
size is read from the input dimension it stands for, and the wrapper is captured with `fxpress.capture`
(torch.export, ATen level), run through the pipeline and compiled. The returned function passes the user's
inputs to the compiled module and returns torch tensors in the structure dynamo expects.

Weights are frozen at compile time (like inductor's ``freezing``): when a parameter or buffer has changed
since (an optimizer step, ``load_state_dict``), calls run the subgraph in eager PyTorch, with one warning,
until ``torch._dynamo.reset()``. Outputs carry no autograd history: this is an inference backend.

Dynamic shapes: a subgraph that dynamo marks dynamic (a second input shape, or ``dynamic=True``) is captured
with those dimensions dynamic (``Dim.AUTO``) and compiled once for every size; torch.export specializes a
dimension the model fixes, and a call with another size then runs eagerly, with one warning.

Falls back to eager PyTorch (``gm.forward``), with one `FallbackWarning` naming the reason, when a subgraph
cannot be captured, a pass fails on it or it cannot be compiled, and when it mutates its weights or draws
random numbers (a model in training mode: call ``model.eval()``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

from fxpress.errors import FxpressError, InputError, PipelineError, TargetError
from fxpress.passes.base import Pass

log = logging.getLogger(__name__)

NAME = "fxpress"
OPTIONS = ("pipeline", "target", "num_threads", "calibration", "tuning")
_WHERE = "torch.compile(backend='fxpress')"
_DYNAMO_ROOT = re.compile(r"^L\['self'\]\.?")


class OptionError(FxpressError):
    """An option of ``torch.compile(..., backend="fxpress", options=...)`` is unknown or has a bad value."""


class FallbackWarning(UserWarning):
    """A subgraph runs in eager PyTorch because fxpress could not compile it (the message says why)."""


class CalibrationWarning(UserWarning):
    """A subgraph was calibrated on the inputs of its first call, not on ``options["calibration"]``."""


class _Unsupported(Exception):
    """A subgraph that this backend does not compile; the message says why (it becomes a `FallbackWarning`)."""


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


# ---- the subgraph: which placeholder is what -------------------------------------------------------------


@dataclass
class Layout:
    """What each placeholder of a dynamo subgraph is: a user input, a weight, or a size of a user input."""

    count: int
    inputs: list[int] = field(default_factory=list)  # placeholder index of each user input, in order
    names: list[str] = field(default_factory=list)  # each user input's name in the compiled function
    weights: dict[int, tuple[str, torch.Tensor]] = field(default_factory=dict)  # index -> (attribute, tensor)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (user input, dimension)
    dynamic: list[dict[int, str]] = field(default_factory=list)  # per user input: dimension -> symbol


def _is_weight(node: torch.fx.Node, value: Any) -> bool:
    from torch._dynamo.source import is_from_unspecialized_param_buffer_source

    source = getattr(node.meta.get("grapharg"), "source", None)
    return isinstance(value, nn.Parameter) or (source is not None and is_from_unspecialized_param_buffer_source(source))


def _attribute(placeholder: str, taken: set[str]) -> str:
    """A readable attribute name for a lifted weight: ``l_self_modules_bn_buffers_running_mean_`` -> ``bn_running_mean``."""
    name = re.sub(r"^l_self_|(?<![a-z0-9])(modules|parameters|buffers)_|_+$", "", placeholder) or "weight"
    name = re.sub(r"\W", "_", name)
    if not name.isidentifier() or name in taken:
        name = f"w{len(taken)}_{name}" if f"w{len(taken)}_{name}".isidentifier() else f"w{len(taken)}"
    taken.add(name)
    return name


def _symbol(value: Any) -> str | None:
    """The symbol a symbolic size is (``s77``); None for a static size. An expression is not supported."""
    if not isinstance(value, torch.SymInt):
        return None
    expr = value.node.expr
    if not getattr(expr, "is_Symbol", False):
        if getattr(expr, "is_number", False):
            return None
        raise _Unsupported(f"an input has a size {expr} that is an expression of other sizes")
    return str(expr)


def layout(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Layout:
    """Classify `gm`'s placeholders (see `Layout`); raises `_Unsupported` for an input fxpress cannot take."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    if len(placeholders) != len(example_inputs):
        raise _Unsupported(f"{len(placeholders)} placeholders but {len(example_inputs)} example inputs")
    out, taken, where = Layout(len(placeholders)), set[str](), {}
    sizes = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs, strict=True)):
        if isinstance(value, torch.SymInt | int) and not isinstance(value, bool):
            sizes.append((i, node))
        elif not isinstance(value, torch.Tensor):
            raise _Unsupported(f"input {node.name} is a {type(value).__name__}; fxpress compiles tensor inputs only")
        elif value.device.type != "cpu":
            raise _Unsupported(
                f"input {node.name} is on {value.device}; fxpress's torch.compile backend runs on the CPU"
            )
        elif _is_weight(node, value):
            out.weights[i] = (_attribute(node.name, taken), value)
        else:
            source = getattr(node.meta.get("grapharg"), "source", None)
            out.names.append(str(getattr(source, "local_name", node.name)))
            fake = node.meta.get("example_value", value)
            dims = {d: s for d, size in enumerate(fake.shape) if (s := _symbol(size)) is not None}
            where.update({s: (len(out.inputs), d) for d, s in dims.items()})
            out.inputs.append(i)
            out.dynamic.append(dims)
    for i, node in sizes:
        symbol = _symbol(node.meta.get("example_value"))
        if symbol is None or symbol not in where:
            raise _Unsupported(f"the subgraph takes a number {node.name} that is no dimension of a tensor input")
        out.sizes[i] = where[symbol]
    return out


class DynamoSubgraph(nn.Module):
    """A dynamo subgraph as a model of its user inputs alone: weights as (frozen) parameters, sizes read off inputs.

    Returns the subgraph's outputs flattened to a tuple of tensors (see `outputs_spec`). Make one with
    `subgraph_module`, which gives ``forward`` one named parameter per input: torch.export binds
    ``dynamic_shapes`` to those, and fxpress re-exports the captured graph with the same spec.
    """

    def __init__(self, gm: torch.fx.GraphModule, layout: Layout) -> None:
        super().__init__()
        self.body = gm
        self.layout = layout
        for name, tensor in layout.weights.values():
            self.register_parameter(name, nn.Parameter(tensor.detach(), requires_grad=False))

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lay = self.layout
        by_slot = dict(zip(lay.inputs, inputs, strict=True))
        args: list[Any] = []
        for i in range(lay.count):
            if i in by_slot:
                args.append(by_slot[i])
            elif i in lay.weights:
                args.append(getattr(self, lay.weights[i][0]))
            else:
                k, d = lay.sizes[i]
                args.append(inputs[k].shape[d])
        with torch.fx.traceback.preserve_node_meta():  # the captured ops keep dynamo's module paths
            out = torch.fx.Interpreter(self.body).run(*args)
        return tuple(pytree.tree_leaves(out))


def subgraph_module(gm: torch.fx.GraphModule, lay: Layout) -> DynamoSubgraph:
    """A `DynamoSubgraph` whose ``forward(self, x0, x1, ...)`` takes the user inputs by position."""
    names = [f"x{k}" for k in range(len(lay.inputs))]
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return self.run({', '.join(names)})\n", namespace)
    cls = type("DynamoSubgraph", (DynamoSubgraph,), {"forward": namespace["forward"], "__module__": __name__})
    return cls(gm, lay)


def outputs_spec(gm: torch.fx.GraphModule) -> pytree.TreeSpec:
    """The structure of `gm`'s outputs; raises `_Unsupported` when one is not a tensor."""
    (output,) = gm.graph.find_nodes(op="output")
    leaves, spec = pytree.tree_flatten(output.args[0])
    for leaf in leaves:
        value = leaf.meta.get("example_value") if isinstance(leaf, torch.fx.Node) else leaf
        if not isinstance(value, torch.Tensor):
            raise _Unsupported(f"the subgraph returns a {type(value).__name__}; fxpress compiles tensor outputs only")
    return spec


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


def _argument(node: torch.fx.Node, op: torch._ops.OpOverload, name: str) -> Any:
    for i, arg in enumerate(op._schema.arguments):
        if arg.name == name:
            return node.args[i] if i < len(node.args) else node.kwargs.get(name, arg.default_value)
    return None


def _check_inference(graph: Any) -> None:
    """Refuse a captured graph that writes its inputs or weights, or draws random numbers (training mode)."""
    for node in graph.nodes("call_function"):
        op = node.target
        if not isinstance(op, torch._ops.OpOverload):
            continue
        for i, arg in enumerate(op._schema.arguments):
            written = arg.alias_info is not None and arg.alias_info.is_write
            target = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if written and isinstance(target, torch.fx.Node) and target.op in ("placeholder", "get_attr"):
                raise _Unsupported(
                    f"the subgraph writes {target.name} in place ({op}: BatchNorm statistics in training mode?); "
                    "fxpress compiles inference graphs: call model.eval() first"
                )
        random = torch.Tag.nondeterministic_seeded in op.tags
        if random and _argument(node, op, "train") is not False:  # dropout(train=False) is the identity
            raise _Unsupported(
                f"the subgraph draws random numbers ({op}: dropout in training mode?); "
                "fxpress compiles inference graphs: call model.eval() first"
            )


class CompiledSubgraph:
    """Runs a compiled subgraph on dynamo's arguments; eager PyTorch where its weights changed since compile."""

    def __init__(self, gm: torch.fx.GraphModule, module: Any, lay: Layout, spec: pytree.TreeSpec) -> None:
        self.gm, self.module, self.layout, self.spec = gm, module, lay, spec
        self.frozen = [(i, t, t._version) for i, (_, t) in lay.weights.items()]
        self._warned = False

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
        try:
            out = self.module(*(args[i] for i in self.layout.inputs))
        except InputError as exc:  # a size torch.export specialized, which dynamo left dynamic
            return self._eager(args, f"the compiled subgraph does not take these inputs: {exc.message}")
        flat = list(out) if isinstance(out, tuple | list) else [out]
        return pytree.tree_unflatten(flat, self.spec)


def _tidy_module_paths(graph: Any) -> None:
    """Dynamo's module paths without its frame prefix: ``L['self'].encoder.layer.0`` -> ``encoder.layer.0``.

    Passes that pick layers by module path (``observe{dynamic=[...]}``, ``skip``) then match the same names
    as on a model captured directly.
    """
    for node in graph.nodes():
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {
                k: (_DYNAMO_ROOT.sub("", path), *rest) for k, (path, *rest) in stack.items()
            }


def _dynamic_shapes(lay: Layout) -> tuple[dict[int, Any], ...] | None:
    if not any(lay.dynamic):
        return None
    auto = torch.export.Dim.AUTO
    return tuple({d: auto for d in dims} for dims in lay.dynamic)


def compile_subgraph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], opts: Options) -> CompiledSubgraph:
    """Capture, compress and compile one dynamo subgraph; raises `_Unsupported` or an `FxpressError` if it cannot."""
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
        graph = fxpress.capture(subgraph_module(gm, lay), inputs, dynamic_shapes=_dynamic_shapes(lay))
        graph.model_name = "torch.compile subgraph"
        _tidy_module_paths(graph)
        _check_inference(graph)
        graph = fxpress.optimize(graph, passes)
        module = fxpress.compile(graph, opts.target, num_threads=opts.num_threads, tuning=opts.tuning)
    log.info("compiled a subgraph (%d ops) for %s with %s", graph.num_ops, opts.target, graph.pipeline)
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
    except (_Unsupported, FxpressError) as exc:
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
