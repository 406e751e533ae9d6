"""Every page of docs/ written as doctests (``>>>`` examples in ```pycon blocks) runs here.

A page is run with ``doctest.testfile`` (NORMALIZE_WHITESPACE | ELLIPSIS), its examples
sharing one namespace top to bottom, so plain ``python -m pytest -q`` checks that what a
page shows is what the code does. Pages written another way (docs/conformance.md runs
its ``python`` blocks in tests/test_testing.py) are left to their own tests.
"""

import doctest
import pathlib

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _doctest_pages():
    return sorted(page for page in DOCS.glob("*.md")
                  if doctest.DocTestParser().get_examples(page.read_text(encoding="utf-8")))


def test_the_tutorial_is_a_doctest_page():
    assert DOCS / "tutorial.md" in _doctest_pages()


@pytest.mark.parametrize("page", _doctest_pages(), ids=lambda page: page.name)
def test_doctests_of(page):
    result = doctest.testfile(str(page), module_relative=False, optionflags=FLAGS,
                              encoding="utf-8", raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {page.name} " \
                               f"failed (the report is above)"
