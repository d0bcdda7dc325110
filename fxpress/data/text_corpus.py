"""English sentences from the docstrings of the standard library and a few packages, for label-free distillation.

    corpus = docstring_sentences(exclude=sentences("eval"))   # ~23,000 sentences, deterministic, nothing downloaded

A distilled student needs text, not labels: the teacher labels whatever it is
given. This builds that text from the ``.py`` files of the standard library
the interpreter ships (``sysconfig.get_paths()["stdlib"]``) and of a few
installed packages (`PACKAGES`: torch, numpy, transformers, which the
MiniLM examples need anyway; one that is not installed is left out), read
with `ast` (nothing is imported or executed): every module, class and function
docstring, private ones too, split into paragraphs; a paragraph that holds
code (an indented line, a ``>>>`` prompt, an rst directive ``..``, a ``::``
block, a field list ``:param`` or a bulleted list) is dropped whole; the rest are split into
sentences after ``.``, ``!`` or ``?``. A sentence is kept if it looks like
prose: it starts with a capital letter, ends with a period, has `min_words`
to `max_words` words, is ASCII and has no code in it (the same test as
`fxpress.models.sentences`: brackets, operators, identifiers with
underscores, ``self``/``None``/..., URLs). Case-insensitive duplicates go.

Held-out text stays out: the files of the modules `fxpress.models.sentences`
drew its 400 sentences from (`SOURCE_MODULES` and their submodules) are not
read at all, test directories neither, and every sentence in `exclude` is
dropped together with its near duplicates: any sentence whose set of
lowercase words shares at least `near` (Jaccard) with an excluded sentence's
(``Return true if the object is a code object.`` against ``... a frame
object.`` is 0.75). The order is the files' sorted paths, then the order in
the file, shuffled with ``random.Random(seed)``; the same interpreter gives
the same list (another Python or package version gives another, like
`fxpress.models.sentences.extract_stdlib_sentences`). With CPython 3.11.7,
torch 2.13, numpy 2.4 and transformers as installed here that is 23,250
sentences, 18 WordPiece tokens on average (about 40 s to build).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import random
import re
import sysconfig
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from fxpress.models.sentences import _CODE, SOURCE_MODULES

PACKAGES: tuple[str, ...] = ("torch", "numpy", "transformers")
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_PARAGRAPH = re.compile(r"^\s|>>>|^\s*\.\.|::|^\s*:\w|^\s*[-*+] ", re.MULTILINE)
_WORD = re.compile(r"[a-z0-9]+")


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def package_root(name: str) -> Path | None:
    """The directory of an installed top-level package, found without importing it (None if absent)."""
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def module_name(path: Path, root: Path) -> str:
    """``email/mime/text.py`` -> ``email.mime.text``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _skipped(name: str, skip: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in skip)


def source_files(root: Path, skip_modules: Iterable[str] = (), base: Path | None = None) -> list[Path]:
    """The ``.py`` files under `root`, sorted, without test directories and the modules in `skip_modules`.

    Module names are dotted paths relative to `base` (default `root`: the
    standard library's; a package's parent directory for a package).
    """
    skip = tuple(skip_modules)
    base = root if base is None else base
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in SKIPPED_DIRS for part in rel[:-1]) or rel[-1].startswith("test_"):
            continue
        if not _skipped(module_name(path, base), skip):
            files.append(path)
    return files


def docstrings(source: str) -> Iterator[str]:
    """The module, class and function docstrings of one file's source, in order (none if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield doc


def prose_sentences(doc: str, min_words: int = 5, max_words: int = 60) -> Iterator[str]:
    """The sentences of a docstring's prose paragraphs that pass the prose test (see the module docstring)."""
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        if not paragraph.strip() or _CODE_PARAGRAPH.search(paragraph):
            continue
        for s in _SPLIT.split(" ".join(paragraph.split())):
            if (
                s[:1].isupper()
                and s.endswith(".")
                and min_words <= len(s.split()) <= max_words
                and s.isascii()
                and not _CODE.search(s)
            ):
                yield s


def _words(s: str) -> frozenset[str]:
    return frozenset(_WORD.findall(s.lower()))


class NearDuplicates:
    """Whether a sentence is one of `sentences` or near one (Jaccard of lowercase word sets >= `near`)."""

    def __init__(self, sentences: Iterable[str], near: float) -> None:
        self.near = near
        self.sets = [_words(s) for s in sentences]
        self.index: dict[str, list[int]] = defaultdict(list)
        for i, words in enumerate(self.sets):
            for w in words:
                self.index[w].append(i)

    def __contains__(self, sentence: object) -> bool:
        words = _words(str(sentence))
        shared: dict[int, int] = defaultdict(int)
        for w in words:
            for i in self.index.get(w, ()):
                shared[i] += 1
        return any(n / len(words | self.sets[i]) >= self.near for i, n in shared.items())


def corpus_files(
    root: Path | None = None, packages: Iterable[str] = PACKAGES, skip_modules: Iterable[str] = SOURCE_MODULES
) -> list[Path]:
    """The files read: the standard library's (less `skip_modules`), then each installed package's, in order."""
    std = stdlib_root() if root is None else root
    files = source_files(std, skip_modules)
    for name in packages:
        found = package_root(name)
        if found is not None and found.is_dir():
            files += source_files(found, skip_modules, base=found.parent)
    return files


def docstring_sentences(
    exclude: Iterable[str] = (),
    *,
    root: Path | None = None,
    packages: Iterable[str] = PACKAGES,
    skip_modules: Iterable[str] = SOURCE_MODULES,
    near: float = 0.5,
    min_words: int = 5,
    max_words: int = 60,
    seed: int = 0,
    limit: int | None = None,
) -> list[str]:
    """Prose sentences of the standard library's docstrings, without `exclude` and its near duplicates.

    See the module docstring; `root` defaults to the running interpreter's
    standard library, `packages` are read after it (``()``: the standard
    library only); `limit` keeps the first that many after the shuffle.
    """
    held_out = NearDuplicates(exclude, near)
    seen: set[str] = set()
    out: list[str] = []
    for path in corpus_files(root, packages, skip_modules):
        for doc in docstrings(path.read_text(encoding="utf-8", errors="replace")):
            for s in prose_sentences(doc, min_words, max_words):
                key = s.lower()
                if key not in seen:
                    seen.add(key)
                    if s not in held_out:
                        out.append(s)
    random.Random(seed).shuffle(out)
    return out[:limit]
