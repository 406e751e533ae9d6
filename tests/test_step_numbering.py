"""One numbering of SRigL's update steps (issue 24): ``dst.steps.STEPS`` is the order the
code runs, and every place a reader meets the steps (the docstrings of dst.updates and
dst.steps, explain's printed text, the tutorial's table and headings) parses back to it."""

import inspect
import pathlib
import re

from srigl_np import explain
from srigl_np.dst import steps, updates
from srigl_np.dst.steps import STEPS

TUTORIAL = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
NUMBERED = [(number, name) for number, name, _ in STEPS]


def _flat(text):
    return " ".join(text.split())


def test_steps_is_the_order_srigl_update_runs():
    body = inspect.getsource(updates.srigl_update.__wrapped__)
    body = body[body.index('"""', body.index('"""') + 3):]          # past the docstring
    calls = [body.index(f" {function}(") for _, _, function in STEPS]
    assert calls == sorted(calls)
    assert [number for number, _, _ in STEPS] == [1, 2, 3, 4, 5]


def test_the_updates_docstrings_number_the_steps_as_steps():
    listed = re.findall(r"^(\d)\. ([a-z -]+?) \(``(\w+)``\):", updates.__doc__, re.MULTILINE)
    assert [(int(n), name, f) for n, name, f in listed] == list(STEPS)
    inline = re.findall(r"(\d)\. ([a-z -]+?) \(``(\w+)``\)", _flat(updates.srigl_update.__doc__))
    assert [(int(n), name, f) for n, name, f in inline] == list(STEPS)
    trace = re.findall(r"(\w+): +\w+, step (\d), ([a-z -]+?) \(", updates.UpdateTrace.__doc__)
    assert [(int(n), name) for _, n, name in trace] == NUMBERED
    sections = re.findall(r"^# -- step (\d): ([a-z -]+?)(?: \(|\s+-)", inspect.getsource(steps),
                          re.MULTILINE)
    assert [(int(n), name) for n, name in sections] == NUMBERED


def test_explain_prints_the_steps_numbered_as_steps(capsys):
    assert explain.main([]) == 0
    out = capsys.readouterr().out
    printed = re.findall(r"^(\d)\. ([^:]+):", out, re.MULTILINE)
    assert [(int(n), name) for n, name in printed] == NUMBERED
    assert explain.main(["--method", "rigl"]) == 0
    printed = re.findall(r"^(\d)\. ([^:]+):", capsys.readouterr().out, re.MULTILINE)
    assert [(int(n), name) for n, name in printed] == [NUMBERED[0], NUMBERED[4]]


def test_the_tutorial_table_and_headings_number_the_steps_as_steps():
    text = TUTORIAL.read_text(encoding="utf-8")
    table = re.findall(r"^\| (\d) \| ([^|]+?) \| `dst\.(\w+)` \|", text, re.MULTILINE)
    assert [(int(n), name, f) for n, name, f in table] == list(STEPS)
    headings = re.findall(r"\*\*Step (\d), ([^*]+)\*\* \(`dst\.(\w+)`", text)
    assert [(int(n), name, f) for n, name, f in headings] == list(STEPS)
