"""Pipelines as text: parse ``"fold-bn,prune-channels{ratio=0.5}"`` and print it back.

Grammar (MLIR's flat form)::

    pipeline := item ("," item)*
    item     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE          KEY in kebab-case (per-channel) or snake_case
    VALUE    := true | false | INT | FLOAT | WORD | "[" VALUE ("," VALUE)* "]"

NAME is a registered pass or a named pipeline (``default``, ``int8``), which
expands in place. What names exist is a `PassRegistry` the caller passes in
(``fxpress.passes.registry.REGISTRY`` holds fxpress's own), so this module
imports no pass and the registry, which imports every pass, sits above it.
Values are converted by the type of the pass's option field, read with
`typing.get_type_hints` (so ``from __future__ import annotations`` makes no
difference): bool, int, float, str, ``X | None`` and ``tuple[X, ...]``; other
types get the text as it is and the pass's ``__post_init__`` judges it. An
unknown pass or option, or a value of the wrong type, is a `PipelineError` that
lists what is valid. `print_pipeline(parse_pipeline(t, r))` equals the canonical
form of `t` (options in declaration order, defaults omitted), and parsing that
again gives equal pass objects. Printing drops Python-only options (data,
teachers, losses) without a marker (`print_pipeline` says why).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fxpress.errors import PipelineError
from fxpress.passes.base import Pass, print_pass

__all__ = ["PassRegistry", "as_passes", "check_order", "option_types", "parse_pipeline", "print_pass", "print_pipeline"]

_NAME = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True, eq=False)
class PassRegistry:
    """What pipeline text may name: passes by name, and named pipelines (text that expands in place)."""

    passes: Mapping[str, type[Pass]]
    pipelines: Mapping[str, str]


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside braces and brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{ch}' in pipeline text {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise PipelineError(f"unclosed brace or bracket in pipeline text {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def option_types(cls: type[Pass]) -> dict[str, Any]:
    """The real type of each option of `cls` (string annotations resolved in the pass's module)."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(f"pass {cls.name!r}: an option annotation cannot be resolved ({exc})") from exc
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _unoptional(typ: Any) -> tuple[Any, bool]:
    """(`typ` without ``None``, whether ``None`` was allowed) for ``X | None`` / ``Optional[X]``."""
    if typing.get_origin(typ) not in (types.UnionType, typing.Union):
        return typ, False
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    optional = len(args) < len(typing.get_args(typ))
    return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional  # noqa: UP007


def _convert(pass_name: str, key: str, typ: Any, raw: str) -> Any:
    base, optional = _unoptional(typ)
    if optional and raw in ("none", "None"):
        return None
    if typing.get_origin(base) is tuple:
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
        item_type = next(iter(typing.get_args(base)), str)
        return tuple(_convert(pass_name, key, item_type, v) for v in _split_top(inner) if v)
    try:
        if base is bool:
            if raw not in ("true", "false"):
                raise ValueError
            return raw == "true"
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
    except ValueError:
        raise PipelineError(f"{pass_name}: option {key!r} takes a {base.__name__}, got {raw!r}") from None
    return raw


def _parse_item(item: str, registry: PassRegistry, depth: int) -> list[Pass]:
    m = re.fullmatch(r"([^{}]*)(?:\{(.*)\})?", item, re.S)
    name = (m.group(1) if m else item).strip()
    if not name or not _NAME.fullmatch(name):
        raise PipelineError(f"{name or item!r} is not a pass name (pass names are kebab-case, e.g. fold-bn)")
    passes, pipelines = registry.passes, registry.pipelines
    if name in pipelines:
        if m and m.group(2) is not None:
            raise PipelineError(
                f"named pipeline {name!r} takes no options; write out its passes ({pipelines[name]}) to set theirs"
            )
        if depth > 8:
            raise PipelineError(f"named pipeline {name!r} expands into itself")
        return _parse(pipelines[name], registry, depth + 1)
    if name not in passes:
        valid = ", ".join(sorted(passes)) + "; named pipelines: " + ", ".join(sorted(pipelines))
        raise PipelineError(
            f"unknown pass {name!r}{_suggest(name, list(passes) + list(pipelines))}; valid passes: {valid}"
        )
    cls = passes[name]
    fields = option_types(cls)
    kwargs: dict[str, Any] = {}
    body = m.group(2) if m else None
    for opt in _split_top(body) if body and body.strip() else []:
        if "=" not in opt:
            raise PipelineError(f"{name}: option {opt!r} must be written key=value")
        key, raw = (s.strip() for s in opt.split("=", 1))
        attr = key.replace("-", "_")
        if attr not in fields:
            valid = ", ".join(f.replace("_", "-") for f in fields) or "(none)"
            raise PipelineError(f"{name}: unknown option {key!r}{_suggest(attr, list(fields))}; valid options: {valid}")
        kwargs[attr] = _convert(name, key, fields[attr], raw)
    try:
        return [cls(**kwargs)]
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{name}: {exc}") from exc


def _parse(text: str, registry: PassRegistry, depth: int = 0) -> list[Pass]:
    if not text.strip():
        return []
    out: list[Pass] = []
    for item in _split_top(text.strip()):
        if not item:
            raise PipelineError(f"empty item in pipeline text {text!r} (two commas in a row?)")
        out.extend(_parse_item(item, registry, depth))
    return out


def parse_pipeline(text: str, registry: PassRegistry) -> list[Pass]:
    """Parse pipeline text into pass objects of `registry`; raises `PipelineError` on bad text."""
    if not isinstance(text, str):
        raise PipelineError(f"pipeline text must be a str, got {type(text).__name__}")
    return _parse(text, registry)


def print_pipeline(passes: Sequence[Pass]) -> str:
    """The text form of a pipeline (each pass's `Pass.text`); `parse_pipeline` reads it back to equal passes.

    Python-only options (calibration data, training data, teachers, losses:
    fields declared ``compare=False``) are dropped, with no marker: pipeline
    text cannot carry them and the parser refuses any value for them, so
    ``[Observe(), Calibrate(data=batches)]`` prints ``observe,calibrate``, which
    parses back to passes equal to these (``data`` takes no part in equality)
    that need the data given again in Python before they can run (``calibrate``
    without data says so). What such an option fed into a run is recorded
    where it happened: the pass's trace record (``stats``: calibrate's
    ``batches``) in the artifact. One order prints text that does not parse:
    ``prune-channels{importance=taylor}`` needs data, and the parser says so.
    """
    return ",".join(p.text() for p in passes)


def as_passes(passes: str | Pass | Sequence[Pass | str], registry: PassRegistry) -> list[Pass]:
    """Normalize what `optimize` accepts (text, a pass, or a list of either); text is parsed against `registry`."""
    if isinstance(passes, str):
        return parse_pipeline(passes, registry)
    if isinstance(passes, Pass):
        return [passes]
    if isinstance(passes, type) and issubclass(passes, Pass):
        raise PipelineError(f"got the class {passes.__name__}, not a pass object: write {passes.__name__}()")
    out: list[Pass] = []
    for i, p in enumerate(passes):
        if isinstance(p, str):
            out.extend(parse_pipeline(p, registry))
        elif isinstance(p, Pass):
            out.append(p)
        elif isinstance(p, type) and issubclass(p, Pass):
            raise PipelineError(f"pipeline item {i} is the class {p.__name__}, not a pass object: write {p.__name__}()")
        else:
            raise PipelineError(f"pipeline item {i} is a {type(p).__name__}: give pass objects or pipeline text")
    return out


def check_order(
    passes: Sequence[Pass], properties: frozenset[str], registry: PassRegistry, history: Sequence[str] = ()
) -> None:
    """Raise `PipelineError` if some pass's `requires` would not hold, or its `forbids` would, when it runs.

    `properties` are those the graph already has; `history` names the passes
    that ran on it in earlier `optimize` calls (for the message only); the
    passes of `registry` that establish a missing property are named as the fix.
    A requirement that an earlier pass of the pipeline invalidated names that
    pass too: ``calibrate requires ['observed']; ran so far: ['observe', 'fold-bn'];
    run observe before it ('observed' was invalidated by fold-bn)``. A forbidden
    property names the pass that made it: ``low-rank cannot run on a graph that
    is ['quantized'] (made by fold-qdq); run low-rank before fold-qdq``, and a pass
    that clears it is named too: ``fold-qdq cannot run on a graph that is
    ['fake-quantized'] (made by fake-quantize); run fold-qdq before fake-quantize,
    or run freeze-fake-quant before it``.
    """
    have = set(properties)
    ran: list[str] = list(history)
    lost: dict[str, str] = {}  # property -> the pass of this pipeline that last invalidated it
    made: dict[str, str] = {}  # property -> the pass of this pipeline that last established it
    for p in passes:
        present = sorted(str(f) for f in p.forbids & have)
        if present:
            makers = sorted({made[f] for f in present if f in made})
            by = f" (made by {', '.join(makers)})" if makers else " (it came that way)"
            where = f"run {p.name} before {' and '.join(makers)}" if makers else f"run {p.name} on the float graph"
            clearers = _clearers(registry, set(present))
            if clearers:
                where += f", or run {' or '.join(clearers)} before it"
            raise PipelineError(f"{p.name} cannot run on a graph that is {present}{by}; {where}")
        missing = sorted(str(f) for f in p.requires - have)
        if missing:
            makers = _nearest_makers(registry, have, set(missing))
            hint = f"; run {' or '.join(makers)} before it" if makers else ""
            lost_by = ", ".join(f"{f!r} was invalidated by {lost[f]}" for f in missing if f in lost)
            why = f" ({lost_by})" if lost_by else ""
            raise PipelineError(f"{p.name} requires {missing}; ran so far: {ran}{hint}{why}")
        lost.update({str(f): p.name for f in p.invalidates & have})
        have -= p.invalidates
        have |= p.establishes
        for f in p.establishes:
            lost.pop(str(f), None)
            made[str(f)] = p.name
        ran.append(p.name)


def _clearers(registry: PassRegistry, present: set[str]) -> list[str]:
    """The passes that invalidate every property in `present` without needing it gone (freeze-fake-quant)."""
    return sorted(
        c.name
        for c in registry.passes.values()
        if present <= {str(f) for f in c.invalidates} and not {str(f) for f in c.forbids} & present
    )


def _nearest_makers(registry: PassRegistry, have: set[str], missing: set[str]) -> list[str]:
    """The passes that establish something `missing` and need the fewest passes before them.

    A pass's distance is the longest chain of passes its requirements need,
    given `have` (0: it can run now). ``fold-qdq`` on a fresh graph names
    ``calibrate`` (after observe), not ``freeze-fake-quant`` (after observe,
    calibrate and fake-quantize), though both establish ``calibrated``.
    """
    inf = float("inf")
    passes = list(registry.passes.values())
    cost: dict[str, float] = {}  # property -> passes needed to establish it

    def pass_cost(c: type[Pass]) -> float:
        return max((0.0 if str(r) in have else cost.get(str(r), inf) for r in c.requires), default=0.0)

    for _ in passes:  # Bellman-Ford: a chain is at most as long as there are passes
        for c in passes:
            for f in c.establishes:
                cost[str(f)] = min(cost.get(str(f), inf), pass_cost(c) + 1)
    makers = {c.name: pass_cost(c) for c in passes if {str(f) for f in c.establishes} & missing}
    best = min(makers.values(), default=inf)
    return sorted(name for name, d in makers.items() if d == best)
