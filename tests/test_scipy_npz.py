"""scipy.sparse .npz files read through our reader (srigl_np.formats.scipy_npz): the
matrix scipy.sparse.load_npz gives, and one line naming the file for what it refuses."""

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
