"""scipy.sparse matrices saved with ``scipy.sparse.save_npz``, read through ``npz.NpzReader``.

``scipy.sparse.load_npz`` reads its file with ``np.load(allow_pickle=False)``, trusting
the sizes the archive declares, and its constructors check a matrix's arrays only
shallowly: an index out of range, a decreasing ``indptr`` or a BSR block that does not
fit reaches scipy's C++ routines (sparsetools), which trust them and read or write
out of bounds, and a negative index wraps to another column. ``load_sparse_npz`` reads
the members with our reader instead (``npz``'s checks: no pickles, no member inflated
past what it declares), checks every invariant of the format in NumPy
(``check_members``), and only then builds the matrix from them as ``load_npz`` does
(scipy 1.17's ``sparse/_matrix_io.py``): the ``format`` member names the class,
``_is_array`` picks the sparse array over the matrix, and the format's members go to
its constructor. The invariants, for a matrix of ``shape`` (n_rows, n_cols):

    every format  shape: 2 integers in [0, MAX_DIMENSION]; data: real numbers (bool,
                  integers, floats; complex refused, its imaginary part would be lost);
                  index arrays: integers, 1-D
    csr, csc      indptr: n_rows + 1 (csc: n_cols + 1) entries, the first 0, never
                  decreasing, the last (nnz) at most len(indices); indices and data: 1-D
                  of one length, the first nnz indices in [0, n_cols) (csc: n_rows)
    bsr           data: (n_blocks, R, C) with R, C >= 1 dividing n_rows, n_cols;
                  indptr: n_rows / R + 1 entries as csr's, indices in [0, n_cols / C)
    coo           row and col (or coords, 2 x nnz): as long as data, in [0, n_rows) and
                  [0, n_cols)
    dia           data: (n_diagonals, L); offsets: n_diagonals distinct values in
                  (-n_rows, n_cols) (a diagonal that meets the matrix)

Entries past nnz in csr, csc and bsr are dropped, as scipy's constructor drops them.
Only the members a matrix needs are read (another member is never inflated), and the ones
that hold an entry each (data, indices, row, col) must declare one length before any of
them is read.
"""

import numpy as np

from .npz import NpzError, NpzReader

# Rows and columns of a matrix: at most 2**24 each. Far beyond any layer's neurons or
# inputs, and it bounds what converting to CSR allocates (one integer per row), which
# the audit and condense both do.
MAX_DIMENSION = 2**24
FORMATS = ("csr", "csc", "bsr", "coo", "dia")
# Members declaring more than this are checked against each other before any is read.
PRECHECK_BYTES = 16 * 2**20


def load_sparse_npz(path):
    """The scipy.sparse array or matrix in the ``save_npz`` file at ``path``; one-line
    ValueError "<path>: not a readable scipy.sparse .npz (<why>)" otherwise."""
    try:
        with NpzReader(path) as npz:
            return _build(path, _Members(npz))
    except NpzError as exc:
        raise ValueError(f"{path}: not a readable scipy.sparse .npz ({exc.reason})") from None
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ValueError(f"{path}: not a readable scipy.sparse .npz ({exc})") from None


class _Members:
    """The archive's members as ``_build`` asks for them, each read when first asked."""

    def __init__(self, npz):
        self.npz, self.read = npz, {}

    def __contains__(self, key):
        return key in self.npz.members

    def __getitem__(self, key):
        if key not in self.read:
            self.read[key] = self.npz.read(key)
        return self.read[key]

    def get(self, key):
        return self[key] if key in self else None

    def check_lengths(self, keys):
        """The members ``keys`` (those present) declare one length, as scipy requires,
        and no more entries than the matrix has positions (the small ``shape`` member is
        read for that); checked before reading only where a member is big enough for
        reading it to matter (``check_members`` words what is wrong with small ones more
        precisely)."""
        present = [key for key in keys if key in self]
        if max((_declared_bytes(self.npz.members[key]) for key in present), default=0) \
                <= PRECHECK_BYTES:
            return
        lengths = {key: self.npz.members[key].shape[:1] for key in present}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{key} {shape}" for key, shape in lengths.items())
            raise ValueError(f"members holding one entry each declare different lengths: "
                             f"{shown}")
        n_rows, n_cols = _shape(_member(self, "shape"))
        entries = max((shape[0] for shape in lengths.values() if shape), default=0)
        if entries > n_rows * n_cols:
            raise ValueError(f"its members declare {entries} entries, more than the "
                             f"{n_rows * n_cols} positions of a {n_rows}x{n_cols} matrix")


def _declared_bytes(member):
    """The bytes a member's .npy header declares."""
    return int(np.prod(member.shape, dtype=np.float64)) * member.dtype.itemsize


def _member(members, key):
    if key not in members:
        raise KeyError(f"{key} is not a file in the archive")   # np.load's words
    return members[key]


def _format_name(path, members):
    """The ``format`` member as a str (files of scipy < 1.0 hold bytes)."""
    sparse_format = members.get("format")
    if sparse_format is None:
        raise ValueError(f"The file {path} does not contain a sparse array or matrix.")
    if sparse_format.dtype.kind not in "SU" or sparse_format.size != 1:
        raise ValueError(f"format must be a string, got {sparse_format.dtype} of shape "
                         f"{sparse_format.shape}")
    sparse_format = sparse_format.item()
    if isinstance(sparse_format, bytes):
        sparse_format = sparse_format.decode("ascii", errors="replace")
    if not (sparse_format.isascii() and sparse_format.isprintable()) or len(
            sparse_format) > 20:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got "
                         f"{sparse_format[:20]!r}")
    return sparse_format


def _is_array(members):
    """The ``_is_array`` member (absent: a matrix), one boolean."""
    flag = members.get("_is_array")
    if flag is None:
        return False
    if flag.dtype.kind not in "biu" or flag.size != 1:
        raise ValueError(f"_is_array must be one boolean, got {flag.dtype} of shape "
                         f"{flag.shape}")
    return bool(flag.item())


def _build(path, members):
    import scipy.sparse

    sparse_format = _format_name(path, members)
    sparse_type = sparse_format + ("_array" if _is_array(members) else "_matrix")
    if sparse_format not in FORMATS:
        if not hasattr(scipy.sparse, sparse_type):
            raise ValueError(f'Unknown format "{sparse_type}"')
        raise NotImplementedError(f"Load is not implemented for sparse matrix of format "
                                  f"{sparse_format}.")
    cls = getattr(scipy.sparse, sparse_type)
    members.check_lengths(("data", "indices") if sparse_format in ("csc", "csr", "bsr") else
                          ("data", "row", "col") if sparse_format == "coo" else ())
    arrays = check_members(sparse_format, members)
    shape = arrays.pop("shape")
    if sparse_format in ("csc", "csr", "bsr"):
        return cls((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
    if sparse_format == "dia":
        return cls((arrays["data"], arrays["offsets"]), shape=shape)
    return cls((arrays["data"], (arrays["row"], arrays["col"])), shape=shape)


# -- the checks, in NumPy, before any scipy routine sees the arrays ---------------------

def check_members(sparse_format, members):
    """The members of a ``sparse_format`` matrix, checked against every invariant of the
    module docstring: {"shape": (n_rows, n_cols), "data": native-order real numbers,
    and the format's index arrays as int64} ("row" and "col" for coo, also from
    "coords"), csr/csc/bsr cut to nnz. ValueError (KeyError for a missing member) naming
    the member and what is wrong."""
    n_rows, n_cols = _shape(_member(members, "shape"))
    data = _data(_member(members, "data"))
    arrays = {"shape": (n_rows, n_cols)}
    if sparse_format in ("csr", "csc"):
        n_major, n_minor = (n_rows, n_cols) if sparse_format == "csr" else (n_cols, n_rows)
        _check_ndim("data", data, 1)
        arrays.update(_compressed(members, data, n_major, n_minor))
    elif sparse_format == "bsr":
        _check_ndim("data", data, 3)
        _, block_rows, block_cols = data.shape
        if block_rows < 1 or block_cols < 1 or n_rows % block_rows or n_cols % block_cols:
            raise ValueError(f"data's blocks ({block_rows}, {block_cols}) must tile the "
                             f"shape ({n_rows}, {n_cols}): each side at least 1 and "
                             f"dividing it")
        arrays.update(_compressed(members, data, n_rows // block_rows,
                                  n_cols // block_cols))
    elif sparse_format == "coo":
        _check_ndim("data", data, 1)
        if "coords" in members:
            coords = _indices("coords", members["coords"], 2)
            if coords.shape[0] != 2:
                raise ValueError(f"coords must have 2 rows (row, col) for shape "
                                 f"({n_rows}, {n_cols}), got shape {coords.shape}")
            row, col = coords
        else:
            row = _indices("row", _member(members, "row"), 1)
            col = _indices("col", _member(members, "col"), 1)
        for name, index, size in (("row", row, n_rows), ("col", col, n_cols)):
            if index.size != data.size:
                raise ValueError(f"{name} must have one entry per value of data "
                                 f"({data.size}), got {index.size}")
            _check_range(name, index, 0, size)
        arrays.update(data=data, row=row.astype(np.int64), col=col.astype(np.int64))
    else:   # dia
        _check_ndim("data", data, 2)
        offsets = _indices("offsets", _member(members, "offsets"), 1)
        if offsets.size != data.shape[0]:
            raise ValueError(f"offsets must have one entry per diagonal of data "
                             f"({data.shape[0]}), got {offsets.size}")
        _check_range("offsets", offsets, -n_rows + 1, n_cols)
        if np.unique(offsets).size != offsets.size:
            raise ValueError("offsets must be distinct, got a repeated diagonal")
        arrays.update(data=data, offsets=offsets.astype(np.int64))
    return arrays


def _shape(shape):
    if shape.dtype.kind not in "iu" or shape.shape != (2,):
        raise ValueError(f"shape must be 2 integers (n_rows, n_cols), got "
                         f"{shape.shape} of {shape.dtype}")
    n_rows, n_cols = (int(n) for n in shape)
    if not (0 <= n_rows <= MAX_DIMENSION and 0 <= n_cols <= MAX_DIMENSION):
        raise ValueError(f"shape must be 2 integers in [0, {MAX_DIMENSION}], got "
                         f"({n_rows}, {n_cols})")
    return n_rows, n_cols


def _data(data):
    """data as native-order real numbers scipy.sparse holds (float16 as float32)."""
    if data.dtype.kind == "c":
        raise ValueError(f"data holds complex numbers ({data.dtype}): weights are real, "
                         f"and the imaginary parts would be lost")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"data must hold numbers, got {data.dtype}")
    if data.dtype == np.float16:
        return data.astype(np.float32)
    return data.astype(data.dtype.newbyteorder("="), copy=False)


def _check_ndim(name, array, ndim):
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")


def _indices(name, array, ndim):
    """An index member: integers (signed or not) of ``ndim`` dimensions."""
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got {array.dtype}")
    _check_ndim(name, array, ndim)
    return array


def _check_range(name, index, low, high):
    """Every entry of ``index`` in [low, high), compared as Python ints (no wrap)."""
    if index.size and (int(index.min()) < low or int(index.max()) >= high):
        raise ValueError(f"{name} must lie in [{low}, {high}), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")


def _compressed(members, data, n_major, n_minor):
    """indptr, indices and data of csr/csc/bsr, checked and cut to nnz: n_major + 1
    pointers from 0, never decreasing, to nnz <= len(indices); the first nnz indices in
    [0, n_minor)."""
    indptr = _indices("indptr", _member(members, "indptr"), 1)
    indices = _indices("indices", _member(members, "indices"), 1)
    if indices.size != data.shape[0]:
        raise ValueError(f"indices must have one entry per value of data "
                         f"({data.shape[0]}), got {indices.size}")
    if indptr.size != n_major + 1:
        raise ValueError(f"indptr must have {n_major + 1} entries for the shape, got "
                         f"{indptr.size}")
    if indptr.size and (int(indptr.min()) < 0 or int(indptr.max()) > indices.size):
        raise ValueError(f"indptr must lie in [0, {indices.size}] (the length of indices), "
                         f"got values in [{int(indptr.min())}, {int(indptr.max())}]")
    indptr = indptr.astype(np.int64)
    if indptr[0] != 0:
        raise ValueError(f"indptr must start at 0, got {int(indptr[0])}")
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        at = int(np.argmax(steps < 0))
        raise ValueError(f"indptr must never decrease, got {int(indptr[at])} then "
                         f"{int(indptr[at + 1])} at entries {at} and {at + 1}")
    nnz = int(indptr[-1])
    indices, data = indices[:nnz], data[:nnz]
    _check_range("indices", indices, 0, n_minor)
    return {"indptr": indptr, "indices": indices.astype(np.int64), "data": data}
