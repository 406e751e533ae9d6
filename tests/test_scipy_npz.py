"""scipy.sparse .npz files read through our reader (srigl_np.formats.scipy_npz): the
matrix scipy.sparse.load_npz gives, and one line naming the file for what it refuses."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse

from srigl_np.formats.scipy_npz import load_sparse_npz


@pytest.mark.parametrize("kind", ["csr", "csc", "coo", "bsr", "dia"])
@pytest.mark.parametrize("as_array", [False, True])
@pytest.mark.parametrize("compressed", [False, True])
def test_load_sparse_npz_gives_what_scipy_gives(tmp_path, kind, as_array, compressed):
    dense = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    dense[dense < 0.6] = 0.0
    matrix = (scipy.sparse.csr_array if as_array else scipy.sparse.csr_matrix)(dense)
    path = tmp_path / "m.npz"
    scipy.sparse.save_npz(path, matrix.asformat(kind), compressed=compressed)
    ours, theirs = load_sparse_npz(path), scipy.sparse.load_npz(path)
    assert type(ours) is type(theirs) and ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())


def _members(path, **members):
    np.savez(path, **members)
    return path


@pytest.mark.parametrize("members, why", [
    ({"indptr": np.array([0, 1]), "indices": np.array([0]), "shape": np.array([1, 2]),
      "format": np.array(b"csr"), "data": np.array([None], dtype=object)},
     "(member 'data.npy' holds Python objects)"),
    ({"indptr": np.array([0, 1]), "indices": np.array([0]), "shape": np.array([1, 2]),
      "format": np.array(b"csr")}, "('data is not a file in the archive')"),
    ({"indptr": np.array([0, 1]), "indices": np.array([0]), "shape": np.array([1, 2]),
      "format": np.array(b"xyz"), "data": np.array([1.0])}, '(Unknown format "xyz_matrix")'),
    ({"indptr": np.array([0, 1]), "indices": np.array([0]), "shape": np.array([1, 2]),
      "data": np.array([1.0])}, "does not contain a sparse array or matrix.)"),
    ({"data": np.array([1.0]), "format": np.array(b"lil"), "shape": np.array([1, 2])},
     "(Load is not implemented for sparse matrix of format lil.)"),
])
def test_what_is_no_sparse_matrix_is_one_line_naming_the_file(tmp_path, members, why):
    path = _members(tmp_path / "bad.npz", **members)
    with pytest.raises(ValueError) as error:
        load_sparse_npz(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable scipy.sparse .npz (")
    assert message.endswith(why) and "\n" not in message


# --- every invariant checked in NumPy before scipy's C++ routines see the arrays --------

def _csr(**change):
    """A valid 2x4 csr file's members, with ``change`` applied (None removes one)."""
    members = {"data": np.ones(4, np.float32), "indices": np.array([0, 2, 1, 3], np.int32),
               "indptr": np.array([0, 2, 4], np.int32), "shape": np.array([2, 4]),
               "format": np.array(b"csr")}
    members.update(change)
    return {key: value for key, value in members.items() if value is not None}


def _bsr(**change):
    return _csr(**{"data": np.ones((2, 2, 2), np.float32), "indices": np.array([0, 1], np.int32),
                   "indptr": np.array([0, 1, 2], np.int32), "shape": np.array([4, 4]),
                   "format": np.array(b"bsr"), **change})


def _coo(**change):
    return _csr(**{"indices": None, "indptr": None, "data": np.ones(3, np.float32),
                   "row": np.array([0, 1, 1]), "col": np.array([0, 1, 3]),
                   "format": np.array(b"coo"), **change})


def _dia(**change):
    return _csr(**{"indices": None, "indptr": None, "data": np.ones((2, 4), np.float32),
                   "offsets": np.array([0, 1], np.int32), "shape": np.array([4, 4]),
                   "format": np.array(b"dia"), **change})


HOSTILE = {
    # csr / csc: what reached csr_sum_duplicates & co. and crashed or wrapped
    "index past the columns": (_csr(indices=np.array([0, 10**6, 1, 3], np.int32)),
                               "indices must lie in [0, 4), got values in [0, 1000000]"),
    "index equal to the columns": (_csr(indices=np.array([0, 4, 1, 3], np.int32)),
                                   "indices must lie in [0, 4)"),
    "negative index": (_csr(indices=np.array([0, -1, 1, 3], np.int32)),
                       "indices must lie in [0, 4), got values in [-1, 3]"),
    "uint64 index": (_csr(indices=np.array([0, 2**64 - 1, 1, 3], np.uint64)),
                     "got values in [0, 18446744073709551615]"),
    "float indices": (_csr(indices=np.array([0, 2.5, 1, 3])),
                      "indices must hold integers, got float64"),
    "bool indices": (_csr(indices=np.array([0, 1, 1, 1], bool)),
                     "indices must hold integers, got bool"),
    "2-D indices": (_csr(indices=np.array([[0, 2], [1, 3]], np.int32)),
                    "indices must be 1-D, got shape (2, 2)"),
    "decreasing indptr": (_csr(indptr=np.array([0, 4, 2], np.int32)),
                          "indptr must never decrease, got 4 then 2 at entries 1 and 2"),
    "indptr not from 0": (_csr(indptr=np.array([1, 2, 4], np.int32)),
                          "indptr must start at 0, got 1"),
    "indptr past nnz": (_csr(indptr=np.array([0, 2, 9], np.int32)),
                        "indptr must lie in [0, 4] (the length of indices)"),
    "indptr length": (_csr(indptr=np.array([0, 4], np.int32)),
                      "indptr must have 3 entries for the shape, got 2"),
    "data and indices differ": (_csr(data=np.ones(3, np.float32)),
                                "indices must have one entry per value of data (3), got 4"),
    "2-D data": (_csr(data=np.ones((2, 2), np.float32)), "data must be 1-D"),
    "csc row index": (_csr(format=np.array(b"csc"), indptr=np.arange(5, dtype=np.int32),
                           indices=np.array([0, 1, 5, 1], np.int32)),
                      "indices must lie in [0, 2), got values in [0, 5]"),
    # data
    "complex data": (_csr(data=np.ones(4, np.complex64)),
                     "data holds complex numbers (complex64): weights are real, and the "
                     "imaginary parts would be lost"),
    "text data": (_csr(data=np.array(list("abcd"))), "data must hold numbers, got <U1"),
    # shape and the small members
    "1-D shape": (_csr(shape=np.array([8])), "shape must be 2 integers (n_rows, n_cols)"),
    "3-D shape": (_csr(shape=np.array([2, 2, 1])), "shape must be 2 integers"),
    "negative shape": (_csr(shape=np.array([-2, 4])),
                       "shape must be 2 integers in [0, 16777216], got (-2, 4)"),
    "huge shape": (_csr(shape=np.array([2, 10**12])), "got (2, 1000000000000)"),
    "float shape": (_csr(shape=np.array([2.0, 4.0])), "shape must be 2 integers"),
    "format not a string": (_csr(format=np.array(5)), "format must be a string"),
    "two formats": (_csr(format=np.array(["csr", "csc"])), "format must be a string"),
    "format with a newline": (_csr(format=np.array("c\nsr")), r"got 'c\nsr'"),
    "_is_array not one flag": (_csr(_is_array=np.array([1, 2])),
                               "_is_array must be one boolean"),
    # bsr: blocks that do not tile the shape
    "bsr block not dividing": (_bsr(shape=np.array([5, 4])),
                               "data's blocks (2, 2) must tile the shape (5, 4)"),
    "bsr empty block": (_bsr(data=np.ones((2, 0, 2), np.float32)),
                        "data's blocks (0, 2) must tile the shape (4, 4)"),
    "bsr 2-D data": (_bsr(data=np.ones((2, 4), np.float32)), "data must be 3-D"),
    "bsr block column": (_bsr(indices=np.array([0, 2], np.int32)),
                         "indices must lie in [0, 2), got values in [0, 2]"),
    "bsr indptr length": (_bsr(indptr=np.array([0, 1, 2, 2], np.int32)),
                          "indptr must have 3 entries for the shape, got 4"),
    # coo
    "coo negative row": (_coo(row=np.array([0, -1, 1])),
                         "row must lie in [0, 2), got values in [-1, 1]"),
    "coo row past": (_coo(row=np.array([0, 2, 1])), "row must lie in [0, 2)"),
    "coo col past": (_coo(col=np.array([0, 1, 4])), "col must lie in [0, 4)"),
    "coo lengths": (_coo(row=np.array([0, 1])),
                    "row must have one entry per value of data (3), got 2"),
    "coo coords past": (_coo(row=None, col=None, coords=np.array([[0, 1, 1], [0, 1, 9]])),
                        "col must lie in [0, 4), got values in [0, 9]"),
    "coo coords rows": (_coo(row=None, col=None, coords=np.zeros((3, 3), np.int64)),
                        "coords must have 2 rows"),
    # dia
    "dia offset past": (_dia(offsets=np.array([0, 2**40])),
                        "offsets must lie in [-3, 4), got values in [0, 1099511627776]"),
    "dia offset below": (_dia(offsets=np.array([0, -4])), "offsets must lie in [-3, 4)"),
    "dia repeated offset": (_dia(offsets=np.array([1, 1])), "offsets must be distinct"),
    "dia offsets length": (_dia(offsets=np.array([1])),
                           "offsets must have one entry per diagonal of data (2), got 1"),
    "dia 1-D data": (_dia(data=np.ones(4, np.float32), offsets=np.array([0])),
                     "data must be 2-D"),
    "dia float offsets": (_dia(offsets=np.array([0.0, 1.0])),
                          "offsets must hold integers, got float64"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_matrix_is_refused_in_numpy_with_one_line(tmp_path, case):
    members, why = HOSTILE[case]
    path = _members(tmp_path / "bad.npz", **members)
    with pytest.raises(ValueError) as error:
        load_sparse_npz(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable scipy.sparse .npz (")
    assert why in message and "\n" not in message


@pytest.mark.parametrize("members", [_csr(), _bsr(), _coo(), _dia(),
                                     _coo(row=None, col=None, coords=np.array([[0, 1, 1],
                                                                               [0, 1, 3]])),
                                     _csr(indices=np.array([0, 2, 1, 3], np.uint16)),
                                     _csr(data=np.ones(4, ">f4"),
                                          indices=np.array([0, 2, 1, 3], ">i4")),
                                     _dia(data=np.ones((2, 9), np.float32))])
def test_the_valid_members_of_every_format_read(tmp_path, members):
    path = _members(tmp_path / "ok.npz", **members)
    matrix = load_sparse_npz(path)
    assert matrix.format == members["format"].item().decode()
    assert matrix.toarray().shape == tuple(members["shape"])


def test_entries_past_nnz_are_dropped_as_scipy_drops_them(tmp_path):
    path = _members(tmp_path / "m.npz", **_csr(indptr=np.array([0, 1, 2], np.int32),
                                               indices=np.array([0, 3, 10**6, -5], np.int32)))
    dense = load_sparse_npz(path).toarray()
    assert dense.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]


def test_a_file_that_crashed_the_audit_is_one_line_in_a_fresh_interpreter(tmp_path):
    """The issue's reproduction: scipy's csr routines segfaulted (status -11) on it."""
    rng = np.random.default_rng(0)
    indices = np.concatenate([rng.choice(64, 6, replace=False) for _ in range(40)])
    indices = indices.astype(np.int32)
    indices[7] = 10**6
    path = _members(tmp_path / "oob.npz", data=np.ones(240, np.float32), indices=indices,
                    indptr=np.arange(0, 241, 6, dtype=np.int32), shape=np.array([40, 64]),
                    format=np.array("csr"))
    for command, options in (("audit", []), ("condense", ["--out", tmp_path / "o.npz"])):
        result = subprocess.run([sys.executable, "-m", f"srigl_np.{command}", path, *options],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"python -m srigl_np.{command}: error: {path}: not a readable scipy.sparse "
            f".npz (indices must lie in [0, 64), got values in [0, 1000000])"]


def test_only_the_members_of_the_format_are_read(tmp_path):
    """A stray deflated member of 32 MiB of zeros (a few kB) is never inflated; a data
    member declaring 32 MiB beside one index is refused before either is read."""
    from npz_files import add_zeros, npy_header, peak_bytes, replace_with_zeros
    matrix = scipy.sparse.csr_matrix(np.eye(3, dtype=np.float32))
    path = tmp_path / "m.npz"
    scipy.sparse.save_npz(path, matrix)
    add_zeros(path, "stray.npy", 32 << 20, npy_header((8 << 20,)))
    error, peak = peak_bytes(lambda: np.testing.assert_array_equal(
        load_sparse_npz(path).toarray(), np.eye(3)))
    assert error is None and peak < 4 << 20
    long_data = replace_with_zeros(path, tmp_path / "long.npz", "data.npy", 32 << 20,
                                   npy_header((8 << 20,)), drop=("stray.npy",))
    error, peak = peak_bytes(lambda: load_sparse_npz(long_data))
    assert peak < 1 << 20 and str(error) == (
        f"{long_data}: not a readable scipy.sparse .npz (members holding one entry each "
        f"declare different lengths: data (8388608,), indices (3,))")


def test_big_members_with_more_entries_than_the_matrix_has_positions_are_not_read(tmp_path):
    """data and indices of 8M entries each (deflated zeros, a few kB) beside a 3x3 shape:
    refused from their headers (they were inflated, 64 MiB, before the checks)."""
    from npz_files import npy_header, peak_bytes, replace_with_zeros
    path = tmp_path / "m.npz"
    scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(np.eye(3, dtype=np.float32)))
    long_data = replace_with_zeros(path, tmp_path / "d.npz", "data.npy", 32 << 20,
                                   npy_header((8 << 20,)))
    both = replace_with_zeros(long_data, tmp_path / "both.npz", "indices.npy", 32 << 20,
                              npy_header((8 << 20,), "<i4"))
    error, peak = peak_bytes(lambda: load_sparse_npz(both))
    assert peak < 1 << 20, peak
    assert str(error) == (f"{both}: not a readable scipy.sparse .npz (its members declare "
                          f"8388608 entries, more than the 9 positions of a 3x3 matrix)")
