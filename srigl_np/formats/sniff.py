"""Which kind of model a path holds, told from its directory entry and zip member names.

Nothing is loaded or inflated: the readers of each kind (``checkpoint.load_model``,
``condensed_model.load``, ``torch_format.load``, ``scipy_npz.load_sparse_npz``) check
the contents. The kinds, in the order they are told apart:

    run         a directory of ``python -m srigl_np.train`` (it holds checkpoint.npz)
    condensed   an .npz with format_version and metadata (``CondensedModel.save``)
    checkpoint  an .npz with meta (``checkpoint.save_checkpoint``)
    scipy       an .npz of ``scipy.sparse.save_npz``: shape with format (every
                format), or indptr and indices (csr, csc, bsr), row and col or coords
                (coo), or offsets (dia)
    torch       any other file: the PyTorch reader refuses it with a reason when it is
                none (not a zip, the legacy format, no data.pkl, ...)
"""

import os
import struct
import zipfile

from ..fileio import file_kind

SOURCE_KINDS = ("run", "checkpoint", "condensed", "torch", "scipy")
# Beside shape.npy, the members that tell a scipy.sparse .npz (any one set).
SCIPY_MEMBERS = ({"format.npy"}, {"indptr.npy", "indices.npy"}, {"row.npy", "col.npy"},
                 {"coords.npy"}, {"offsets.npy"})


def _zip_names(path):
    # None for what is no readable zip: the torch reader, last in line, says why.
    try:
        with zipfile.ZipFile(path) as archive:
            return set(archive.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            struct.error, OverflowError, NotImplementedError, MemoryError):
        return None


def source_kind(path):
    """Which of SOURCE_KINDS ``path`` is (see the module docstring); ValueError, one
    line, for a missing path or a directory that is no run."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "checkpoint.npz")):
            raise ValueError(f"{path} is a directory without a checkpoint.npz: not a run "
                             f"directory of python -m srigl_np.train")
        return "run"
    kind = file_kind(path)
    if kind is None:
        raise ValueError(f"{path}: no such file or directory")
    if kind != "a regular file":
        raise ValueError(f"{path}: not a regular file ({kind}); give a model file or a run "
                         f"directory")
    names = _zip_names(path) or set()
    if {"format_version.npy", "metadata.npy"} <= names:
        return "condensed"
    if "meta.npy" in names:
        return "checkpoint"
    if "shape.npy" in names and any(members <= names for members in SCIPY_MEMBERS):
        return "scipy"
    return "torch"
