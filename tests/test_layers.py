"""Imports inside fxpress point down its layers only, and no two modules import each other.

DESIGN.md: "Imports point down only: ir <- quant / sparse <- train <- passes
<- backends <- reports / api / cli; runtime depends on none of them". This
test reads every module of the package with `ast` (no import runs), collects
every ``import`` / ``from ... import`` naming an fxpress module, wherever it
sits (top level, inside a function, under ``if TYPE_CHECKING``), and checks:

- layers: a module imports only modules of its own layer or lower ones;
  leaves (errors, loading, version, runtime) import nothing of fxpress above
  them (the runtime: errors and itself only), and anything may import a leaf;
- cycles: the module graph has no cycle. Imports under ``if TYPE_CHECKING``
  are left out of this one: they never run, so they cannot form an import
  cycle (a type-only upward import is still a layer violation above).

``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
``a.b``. Importing a module runs its parent packages' ``__init__`` too; that
is Python's package rule, not an edge here (import-linter counts it the same
way), so a package ``__init__`` that re-exports its modules forms no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import fxpress

PACKAGE = Path(fxpress.__file__).parent

# (prefix, layer): the longest matching prefix decides; a lower layer number is lower in the stack.
LAYERS: list[tuple[str, int]] = [
    ("fxpress.ir", 0),
    ("fxpress.quant", 1),
    ("fxpress.sparse", 1),
    ("fxpress.lowrank", 1),
    ("fxpress.sharing", 1),
    ("fxpress.train", 2),
    ("fxpress.passes", 3),
    ("fxpress.backends", 4),
    ("fxpress.export", 4),
    ("fxpress.reports", 5),
    ("fxpress.api", 5),
    ("fxpress.cli", 5),
    ("fxpress.demo", 5),
    ("fxpress.models", 5),
    ("fxpress.data", 5),
    ("fxpress.integrations", 5),
    ("fxpress", 5),  # the package root: the lazy public API
]
# Leaves: importable from every layer; what each may import of fxpress itself.
LEAVES: dict[str, tuple[str, ...]] = {
    "fxpress.errors": (),
    "fxpress.progress": (),
    "fxpress.loading": (),
    "fxpress.version": (),
    "fxpress.runtime": ("fxpress.errors", "fxpress.runtime"),
}

# Known violations in code the layering change could not touch (fxpress/backends/ is being
# reworked by its owner). Remove an entry when its import is fixed; the tests fail on an entry
# that no longer occurs, so the lists cannot go stale.
ALLOWED_UPWARD: set[tuple[str, str]] = set()  # (importer, imported) pairs still to fix; none left
ALLOWED_CYCLES: set[frozenset[str]] = set()  # cycles still to break; none left


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The fxpress module `name` names: itself, or its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported fxpress module, only under TYPE_CHECKING) for every import statement in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if not target.startswith("fxpress"):
                continue
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.append((resolved, id(node) in typing_only))
    return found


def _edges() -> list[tuple[str, str, bool]]:
    modules = _modules()
    return [(m, t, typing) for m, p in modules.items() for t, typing in _imports(m, p, modules)]


def _leaf(module: str) -> str | None:
    return next((leaf for leaf in LEAVES if module == leaf or module.startswith(leaf + ".")), None)


def _layer(module: str) -> int:
    matches = [(len(prefix), layer) for prefix, layer in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py"
    return max(matches)[1]


def _violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when it may."""
    leaf = _leaf(importer)
    if leaf is not None:
        allowed = LEAVES[leaf]
        if any(imported == a or imported.startswith(a + ".") for a in allowed):
            return None
        return f"{importer} imports {imported}: {leaf} is a leaf and may import only {list(allowed) or 'nothing'} of fxpress"
    if _leaf(imported) is not None:
        return None
    if _layer(imported) > _layer(importer):
        return f"{importer} (layer {_layer(importer)}) imports {imported} (layer {_layer(imported)}), a higher layer"
    return None


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        if _leaf(module) is None:
            _layer(module)


def test_imports_point_down() -> None:
    found = {(a, b): why for a, b, _ in _edges() if (why := _violation(a, b)) is not None}
    new = [why for pair, why in sorted(found.items()) if pair not in ALLOWED_UPWARD]
    assert not new, "upward imports:\n  " + "\n  ".join(new)
    stale = sorted(ALLOWED_UPWARD - set(found))
    assert not stale, f"ALLOWED_UPWARD lists imports that no longer break a rule; remove them: {stale}"


def test_no_import_cycles() -> None:
    graph = nx.DiGraph()
    graph.add_edges_from((a, b) for a, b, typing in _edges() if not typing)
    found = [c for c in nx.simple_cycles(graph)]
    new = sorted(" -> ".join([*c, c[0]]) for c in found if frozenset(c) not in ALLOWED_CYCLES)
    assert not new, "import cycles:\n  " + "\n  ".join(new)
    stale = [sorted(c) for c in ALLOWED_CYCLES - {frozenset(c) for c in found}]
    assert not stale, f"ALLOWED_CYCLES lists cycles that no longer occur; remove them: {stale}"


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    modules = {"fxpress.ir.a": tmp_path / "a.py", "fxpress.passes.b": tmp_path / "b.py", "fxpress.ir": tmp_path}
    source = "from . import b\ndef f():\n    from fxpress.passes.b import thing\n"
    path = tmp_path / "a.py"
    path.write_text(source)
    assert _imports("fxpress.ir.a", path, modules) == [("fxpress.ir", False), ("fxpress.passes.b", False)]
    assert _violation("fxpress.ir.a", "fxpress.passes.b") is not None
    assert _violation("fxpress.runtime.load", "fxpress.ir.graph") is not None
    assert _violation("fxpress.passes.b", "fxpress.runtime.load") is None
