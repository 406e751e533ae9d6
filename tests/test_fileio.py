"""atomic_write: all or nothing, and the permissions a plain open() would give."""

import os
import stat

import pytest

from srigl_np.fileio import LOCK_NAME, _umask, atomic_write, lock_directory


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
