"""scipy.sparse matrices saved with ``scipy.sparse.save_npz``, read through ``npz.read_npz``.

``scipy.sparse.load_npz`` reads its file with ``np.load(allow_pickle=False)``, trusting
the sizes the archive declares. ``load_sparse_npz`` reads the members with our reader
instead (``npz``'s checks: no pickles, no member inflated past what it declares) and
then builds the matrix from them as ``load_npz`` does (scipy 1.17's
``sparse/_matrix_io.py``): the ``format`` member names the class, ``_is_array`` picks
the sparse array over the matrix, and the format's members go to its constructor,
which checks them as it checks any arrays it is given. Only those members are read
(another member is never inflated), and the ones that hold an entry each (data,
indices, row, col) must declare one length before any of them is read.
"""

from .npz import NpzError, NpzReader


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
        """The members ``keys`` (those present) declare one length, as scipy requires."""
        lengths = {key: self.npz.members[key].shape[:1] for key in keys if key in self}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{key} {shape}" for key, shape in lengths.items())
            raise ValueError(f"members holding one entry each declare different lengths: "
                             f"{shown}")


def _member(members, key):
    if key not in members:
        raise KeyError(f"{key} is not a file in the archive")   # np.load's words
    return members[key]


def _build(path, members):
    import scipy.sparse

    sparse_format = members.get("format")
    if sparse_format is None:
        raise ValueError(f"The file {path} does not contain a sparse array or matrix.")
    sparse_format = sparse_format.item()
    if not isinstance(sparse_format, str):
        sparse_format = sparse_format.decode("ascii")   # files of scipy < 1.0 hold bytes
    sparse_type = sparse_format + ("_array" if members.get("_is_array") else "_matrix")
    try:
        cls = getattr(scipy.sparse, sparse_type)
    except AttributeError:
        raise ValueError(f'Unknown format "{sparse_type}"') from None
    members.check_lengths(("data", "indices") if sparse_format in ("csc", "csr", "bsr") else
                          ("data", "row", "col") if sparse_format == "coo" else ())
    if sparse_format in ("csc", "csr", "bsr"):
        return cls((_member(members, "data"), _member(members, "indices"),
                    _member(members, "indptr")), shape=_member(members, "shape"))
    if sparse_format == "dia":
        return cls((_member(members, "data"), _member(members, "offsets")),
                   shape=_member(members, "shape"))
    if sparse_format == "coo":
        if "coords" in members:
            return cls((_member(members, "data"), members["coords"]),
                       shape=_member(members, "shape"))
        return cls((_member(members, "data"), (_member(members, "row"),
                                               _member(members, "col"))),
                   shape=_member(members, "shape"))
    raise NotImplementedError(f"Load is not implemented for sparse matrix of format "
                              f"{sparse_format}.")
