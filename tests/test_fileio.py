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
