"""Which kind of model a path holds, told from its directory entry and zip member names.

Nothing is loaded or inflated: the readers of each kind (``checkpoint.load_model``,
``condensed_model.load``, ``torch_format.load``, ``scipy_npz.load_sparse_npz``) check
the contents. The kinds, in the order they are told apart:

    run         a directory of ``python -m srigl_np.train`` (it holds checkpoint.npz)
    condensed   an .npz with format_version and metadata (``CondensedModel.save``)
    checkpoint  an .npz with meta (``checkpoint.save_checkpoint``)
    scipy       an .npz of ``scipy.sparse.save_npz``: indptr, indices and shape
                (csr, csc, bsr) or row, col and shape (coo)
    torch       any other file: the PyTorch reader refuses it with a reason when it is
                none (not a zip, the legacy format, no data.pkl, ...)
"""

import os
import struct
import zipfile

SOURCE_KINDS = ("run", "checkpoint", "condensed", "torch", "scipy")


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
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file or directory")
    names = _zip_names(path) or set()
    if {"format_version.npy", "metadata.npy"} <= names:
        return "condensed"
    if "meta.npy" in names:
        return "checkpoint"
    if {"indptr.npy", "indices.npy", "shape.npy"} <= names or {
            "row.npy", "col.npy", "shape.npy"} <= names:
        return "scipy"
    return "torch"
