"""atomic_write: all or nothing, and the permissions a plain open() would give."""

import os
import stat

import pytest

from srigl_np.fileio import _umask, atomic_write


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_the_umask_mode_not_mkstemps_private_one(tmp_path, umask_022):
    path = tmp_path / "metrics.json"
    atomic_write(path, lambda f: f.write(b"{}"))
    assert path.read_bytes() == b"{}"
    assert _mode(path) == 0o644


def test_replaced_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o640


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


def test_umask_is_read_with_and_without_proc(tmp_path, umask_022):
    assert _umask() == 0o022
    assert _umask(status_path=str(tmp_path / "missing")) == 0o022  # the os.umask fallback
    assert os.umask(0o022) == 0o022  # and the fallback put it back


# -- the bounds on reading ------------------------------------------------------------------

def test_max_bytes_default_and_override(monkeypatch):
    from srigl_np.fileio import DEFAULT_MAX_BYTES, max_bytes, over_max_bytes
    monkeypatch.delenv("SRIGL_NP_MAX_BYTES", raising=False)
    assert max_bytes() == DEFAULT_MAX_BYTES == 4 << 30
    assert over_max_bytes(4 << 30, "x declares") is None
    assert over_max_bytes((4 << 30) + 1, "x declares").startswith(
        "x declares 4294967297 bytes in all, more than the 4294967296 bytes")
    for text, value in [("123", 123), ("8K", 8 << 10), ("16g", 16 << 30), ("2 GiB", 2 << 30),
                        ("1T", 1 << 40), ("5MB", 5 << 20)]:
        monkeypatch.setenv("SRIGL_NP_MAX_BYTES", text)
        assert max_bytes() == value


@pytest.mark.parametrize("text, message", [
    ("[" * 33 + "]" * 33, "f.json: JSON nested 33 deep, more than the 32 levels"),
    ("[" * 100000 + "]" * 100000, "f.json: JSON nested 100000 deep"),   # a RecursionError
    ('{"a": ' * 40 + "1" + "}" * 40, "f.json: JSON nested 40 deep"),
    ("[" + "0," * 10 + "0]", "f.json: 23 characters of JSON, more than the 20"),
])
def test_parse_json_refuses_deep_or_long_text_before_parsing(text, message):
    from srigl_np.fileio import parse_json
    with pytest.raises(ValueError) as error:
        parse_json(text, "f.json", max_chars=20 if "0," in text else 10**6)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_parse_json_counts_brackets_outside_strings_only():
    import json

    from srigl_np.fileio import json_depth, parse_json
    text = json.dumps({"a": ["[[[[" * 20, {"b": '\\"]]]{{{'}], "c": "\\\\"})
    assert json_depth(text) == 3 and json_depth("1") == 0 and json_depth('"[["') == 0
    assert parse_json(text, "f") == json.loads(text)
    assert parse_json(b'{"x": [1, 2]}', "f") == {"x": [1, 2]}
    nested = "[" * 32 + "]" * 32
    assert parse_json(nested, "f") == json.loads(nested)
    with pytest.raises(json.JSONDecodeError):   # the caller words it
        parse_json("{oops", "f")
