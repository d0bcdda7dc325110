"""fxpress.data.text_corpus: prose sentences of docstrings, code left out, held-out text and its near duplicates out."""

from __future__ import annotations

from pathlib import Path

from fxpress.data import text_corpus
from fxpress.data.text_corpus import NearDuplicates, docstring_sentences, module_name, prose_sentences, source_files

MODULE = '''"""A small module for the corpus tests.

It holds a class and a function whose docstrings have prose and code in them.
"""


class Queue:
    """Put an item into the queue without ever blocking the caller.

    Example::

        q.put(item)

    >>> q = Queue()
    The second paragraph is plain prose and should be kept whole. A call like self.put(x) is code.
    """

    def get(self):
        """Remove and return an item from the queue when one is there.

        :param block: whether to wait for an item to come along
        """


def helper():
    """Return true if the object is a frame object."""
'''


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(MODULE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "x.py").write_text('"""A test module whose sentence must not be read at all."""\n')
    (tmp_path / "argparse.py").write_text('"""A module the held-out sentences came from, never read here."""\n')
    (tmp_path / "broken.py").write_text('"""This file does not parse as Python at all."""\ndef (:\n')
    return tmp_path


def test_prose_paragraphs_only_and_code_dropped():
    doc = "Run the thing quickly and quietly.\n\n>>> run()\n\nShort.\n\nIt uses self.run for the rest of it."
    assert list(prose_sentences(doc)) == ["Run the thing quickly and quietly."]
    assert list(prose_sentences("Two sentences in a row here. And a second one follows it.")) == [
        "Two sentences in a row here.",
        "And a second one follows it.",
    ]


def test_files_skip_tests_and_held_out_modules(tmp_path: Path):
    root = _tree(tmp_path)
    names = [module_name(p, root) for p in source_files(root, ("argparse",))]
    assert names == ["broken", "pkg"]


def test_sentences_of_a_tree(tmp_path: Path):
    root = _tree(tmp_path)
    out = docstring_sentences(root=root, packages=())
    assert sorted(out) == sorted(
        [
            "A small module for the corpus tests.",
            "It holds a class and a function whose docstrings have prose and code in them.",
            "Put an item into the queue without ever blocking the caller.",
            "Remove and return an item from the queue when one is there.",
            "Return true if the object is a frame object.",
        ]
    )
    assert docstring_sentences(root=root, packages=(), seed=1) == docstring_sentences(root=root, packages=(), seed=1)
    assert len(docstring_sentences(root=root, packages=(), limit=2)) == 2


def test_held_out_sentences_and_near_duplicates_are_excluded(tmp_path: Path):
    root = _tree(tmp_path)
    out = docstring_sentences(["Return true if the object is a code object."], root=root, packages=())
    assert "Return true if the object is a frame object." not in out  # Jaccard 6/8 of the word sets
    assert "Put an item into the queue without ever blocking the caller." in out
    near = NearDuplicates(["Put an item into the queue without blocking."], 0.5)
    assert "put an item into the queue without blocking." in near
    assert "Remove and return an item from the queue when one is there." not in near


def test_the_stdlib_corpus_holds_no_held_out_sentence():
    from fxpress.models.sentences import sentences

    held_out = sentences("eval")
    out = docstring_sentences(held_out, packages=())  # the standard library only: a few seconds
    assert len(out) > 3_000
    assert not {s.lower() for s in held_out} & {s.lower() for s in out}
    near = NearDuplicates(held_out, 0.5)
    assert not any(s in near for s in out[:500])
    assert text_corpus.package_root("surely_not_an_installed_package") is None
