"""Pipelines as text: parse ``"fold-bn,prune-channels{ratio=0.5}"`` and print it back.

Grammar (MLIR's flat form)::

    pipeline := item ("," item)*
    item     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE          KEY in kebab-case (per-channel) or snake_case
    VALUE    := true | false | INT | FLOAT | WORD | "[" VALUE ("," VALUE)* "]"

NAME is a registered pass or a named pipeline (``default``), which expands in
place. Values are converted by the type of the pass's option field; an unknown
pass or option, or a value of the wrong type, is a `PipelineError` that lists
what is valid. `print_pipeline(parse_pipeline(t))` equals the canonical form of
`t` (options in declaration order, defaults omitted), and parsing that again
gives equal pass objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from typing import Any

from fxpress.errors import PipelineError
from fxpress.passes.base import Pass

_NAME = re.compile(r"[a-z][a-z0-9-]*")


def _registry() -> tuple[dict[str, type[Pass]], dict[str, str]]:
    from fxpress.passes.registry import PASSES, PIPELINES

    return PASSES, PIPELINES


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside braces and brackets."""
    parts, depth, cur = [], 0, []
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


def _type_text(typ: Any) -> str:
    """A field's type as text (``"int | None"``), whether the annotation is a string or a type."""
    if isinstance(typ, str):
        return typ
    return typ.__name__ if isinstance(typ, type) else str(typ)


def _convert(pass_name: str, key: str, typ: str, raw: str) -> Any:
    optional = "None" in typ
    base = typ.replace("| None", "").replace("None |", "").strip()
    if optional and raw in ("none", "None"):
        return None
    if base.startswith("tuple"):
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
        item_type = base[base.index("[") + 1 : base.index(",") if "," in base else -1].strip()
        return tuple(_convert(pass_name, key, item_type, v) for v in _split_top(inner) if v)
    try:
        if base == "bool":
            if raw not in ("true", "false"):
                raise ValueError
            return raw == "true"
        if base == "int":
            return int(raw)
        if base == "float":
            return float(raw)
    except ValueError:
        raise PipelineError(f"{pass_name}: option {key!r} takes a {base}, got {raw!r}") from None
    return raw


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def _parse_item(item: str, passes: dict[str, type[Pass]], pipelines: dict[str, str], depth: int) -> list[Pass]:
    m = re.fullmatch(r"([^{}]*)(?:\{(.*)\})?", item, re.S)
    name = (m.group(1) if m else item).strip()
    if not name or not _NAME.fullmatch(name):
        raise PipelineError(f"{name or item!r} is not a pass name (pass names are kebab-case, e.g. fold-bn)")
    if name in pipelines:
        if m and m.group(2) is not None:
            raise PipelineError(
                f"named pipeline {name!r} takes no options; write out its passes ({pipelines[name]}) to set theirs"
            )
        if depth > 8:
            raise PipelineError(f"named pipeline {name!r} expands into itself")
        return _parse(pipelines[name], depth + 1)
    if name not in passes:
        valid = ", ".join(sorted(passes)) + "; named pipelines: " + ", ".join(sorted(pipelines))
        raise PipelineError(
            f"unknown pass {name!r}{_suggest(name, list(passes) + list(pipelines))}; valid passes: {valid}"
        )
    cls = passes[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
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
        kwargs[attr] = _convert(name, key, _type_text(fields[attr].type), raw)
    try:
        return [cls(**kwargs)]
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{name}: {exc}") from exc


def _parse(text: str, depth: int = 0) -> list[Pass]:
    passes, pipelines = _registry()
    if not text.strip():
        return []
    out: list[Pass] = []
    for item in _split_top(text.strip()):
        if not item:
            raise PipelineError(f"empty item in pipeline text {text!r} (two commas in a row?)")
        out.extend(_parse_item(item, passes, pipelines, depth))
    return out


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into pass objects; raises `PipelineError` on bad text."""
    if not isinstance(text, str):
        raise PipelineError(f"pipeline text must be a str, got {type(text).__name__}")
    return _parse(text)


def print_pass(p: Pass) -> str:
    """One pass as text: options that differ from their defaults, in field order."""
    opts = []
    for f in dataclasses.fields(p):
        value = getattr(p, f.name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        if value != default:
            opts.append(f"{f.name.replace('_', '-')}={_format_value(value)}")
    return f"{p.name}{{{','.join(opts)}}}" if opts else p.name


def print_pipeline(passes: Sequence[Pass]) -> str:
    """The text form of a pipeline; `parse_pipeline` reads it back to equal passes."""
    return ",".join(print_pass(p) for p in passes)


def as_passes(passes: str | Pass | Sequence[Pass | str]) -> list[Pass]:
    """Normalize what `optimize` accepts (text, a pass, or a list of either)."""
    if isinstance(passes, str):
        return parse_pipeline(passes)
    if isinstance(passes, Pass):
        return [passes]
    if isinstance(passes, type) and issubclass(passes, Pass):
        raise PipelineError(f"got the class {passes.__name__}, not a pass object: write {passes.__name__}()")
    out: list[Pass] = []
    for i, p in enumerate(passes):
        if isinstance(p, str):
            out.extend(parse_pipeline(p))
        elif isinstance(p, Pass):
            out.append(p)
        elif isinstance(p, type) and issubclass(p, Pass):
            raise PipelineError(f"pipeline item {i} is the class {p.__name__}, not a pass object: write {p.__name__}()")
        else:
            raise PipelineError(f"pipeline item {i} is a {type(p).__name__}: give pass objects or pipeline text")
    return out


def check_order(passes: Sequence[Pass], properties: frozenset[str], history: Sequence[str] = ()) -> None:
    """Raise `PipelineError` if some pass's `requires` would not hold when it runs.

    `properties` are those the graph already has; `history` names the passes
    that ran on it in earlier `optimize` calls (for the message only).
    """
    registry, _ = _registry()
    have = set(properties)
    ran: list[str] = list(history)
    for p in passes:
        missing = sorted(p.requires - have)
        if missing:
            makers = sorted({c.name for c in registry.values() if c.establishes & set(missing)})
            hint = f"; run {' or '.join(makers)} before it" if makers else ""
            raise PipelineError(f"{p.name} requires {missing}; ran so far: {ran}{hint}")
        have -= p.invalidates
        have |= p.establishes
        ran.append(p.name)
