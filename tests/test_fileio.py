"""atomic_write: all or nothing, the permissions a plain open() would give, and one rule
for what a target may be (a symlink written through; a directory, FIFO or device refused)."""

import errno
import os
import stat

import pytest

from srigl_np.fileio import (LOCK_NAME, _umask, atomic_write, file_kind, lock_directory,
                             not_a_file)


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


# -- what a target may be: one rule for every writer -------------------------------------------

def _write_new(path):
    atomic_write(path, lambda f: f.write(b"new"))


def test_a_symlink_to_a_file_is_written_through_and_stays_a_link(tmp_path, umask_022):
    target = tmp_path / "real.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    _write_new(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_dangling_symlink_creates_its_target_as_open_would(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "later.json")
    _write_new(link)
    assert link.is_symlink() and (tmp_path / "later.json").read_bytes() == b"new"


def _identity(path):
    """What the directory entry is: its type and inode (a link stays that link)."""
    entry = os.lstat(path)
    return stat.S_IFMT(entry.st_mode), entry.st_ino


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make, kind", [
    (_fifo, "not a regular file (a FIFO); give a file path"),
    (lambda p: p.mkdir() or p, "is a directory; give a file name"),
    (lambda p: p.symlink_to(_fifo(p.with_name("pipe"))) or p,
     "not a regular file (a FIFO); give a file path"),
    (lambda p: p.symlink_to(os.devnull) or p,
     "not a regular file (a character device); give a file path"),
    (lambda p: p.symlink_to("/proc/self/fd/1") or p,   # as /dev/stdout is, whatever fd 1 is
     "not a regular file (a stream of this process); give a file path"),
])
def test_a_target_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path, make, kind):
    """Renaming over a FIFO or a device node (/dev/stdout, /dev/null) would replace it with
    a file; writing into a FIFO would block. The link to /dev/null stays a link."""
    path = make(tmp_path / "out.json")
    before = sorted(p.name for p in tmp_path.iterdir()), _identity(path)
    with pytest.raises(OSError) as info:
        _write_new(path)
    assert str(info.value) == f"{path}: {kind}"
    # No temporary left, and the target what it was (not replaced by a file).
    assert (sorted(p.name for p in tmp_path.iterdir()), _identity(path)) == before


def test_a_failed_write_names_the_path_not_the_temporary(tmp_path):
    """A full disk: the same kind of OSError, its errno kept, one line naming the file."""
    path = tmp_path / "out.json"
    path.write_bytes(b"old")

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_write(path, full)
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_directory_that_refuses_the_temporary_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"^cannot write {blocker / 'out.json'}: "):
        _write_new(blocker / "out.json")


def test_file_kind_names_what_a_path_is(tmp_path):
    (tmp_path / "f").write_text("")
    os.mkfifo(tmp_path / "p")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    assert file_kind(tmp_path / "f") == "a regular file"
    assert file_kind(tmp_path) == "a directory"
    assert file_kind(tmp_path / "p") == "a FIFO"
    assert file_kind(os.devnull) == "a character device"
    assert file_kind(tmp_path / "dangling") is None and file_kind(tmp_path / "no") is None
    assert not_a_file(tmp_path / "f") is None and not_a_file(tmp_path / "no") is None


# -- lock_directory: one writer per directory ------------------------------------------------

def test_a_lock_is_exclusive_names_its_holder_and_goes_with_release(tmp_path):
    lock = lock_directory(tmp_path, "python -m srigl_np.train", advice="wait")
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} python -m srigl_np.train\n"
    with pytest.raises(ValueError) as refused:
        lock_directory(tmp_path, "other", advice="wait for it")   # a second descriptor
    assert str(refused.value) == (f"{tmp_path} is in use by PID {os.getpid()} "
                                  f"(python -m srigl_np.train); wait for it")
    lock.release()
    lock.release()   # twice is harmless
    assert list(tmp_path.iterdir()) == []
    with lock_directory(tmp_path, "again", advice=""):
        assert (tmp_path / LOCK_NAME).is_file()
    assert list(tmp_path.iterdir()) == []


def test_a_stale_or_garbled_lock_file_blocks_no_one(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"\xff\x00 not a pid\n" * 1000)
    with lock_directory(tmp_path, "python -m srigl_np.train", advice=""):
        pass
    (tmp_path / LOCK_NAME).write_bytes(b"\xff\x00 not a pid\n")
    lock = lock_directory(tmp_path, "x", advice="")
    os.pwrite(lock.fd, b"\x1b[2J garbage", 0)   # a holder whose file says nothing useful
    with pytest.raises(ValueError, match=r"is in use by another process; wait$"):
        lock_directory(tmp_path, "y", advice="wait")
    lock.release()


@pytest.mark.parametrize("make", [
    lambda path, target: os.symlink(target, path),
    lambda path, target: os.mkfifo(path),
    lambda path, target: os.mkdir(path),
])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_untouched(tmp_path, make):
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    (tmp_path / "run").mkdir()
    make(tmp_path / "run" / LOCK_NAME, target)
    with pytest.raises(ValueError, match=rf"cannot lock {tmp_path / 'run' / LOCK_NAME}: "):
        lock_directory(tmp_path / "run", "x", advice="")
    assert target.read_text() == "mine"
    assert os.path.lexists(tmp_path / "run" / LOCK_NAME)


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
