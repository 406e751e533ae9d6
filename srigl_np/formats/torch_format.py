"""Reading PyTorch checkpoints without PyTorch, treating every file as untrusted.

``load(path)`` reads the zip format ``torch.save`` writes by default since PyTorch 1.6::

    <top>/data.pkl            the object graph, a pickle (protocol 2 unless asked otherwise)
    <top>/data/<key>          one raw storage per key, in the byte order <top>/byteorder
                              names ("little" when it is absent)
    <top>/version, <top>/.format_version, <top>/.storage_alignment,
    <top>/.data/serialization_id        bookkeeping, not needed to read the tensors

``<top>`` is "archive" or the stem of the name the file was saved under.

What makes it safe
------------------
A pickle is a program: each global it names is imported and called. Here nothing the
file names is imported or run, and every size the file declares is checked before
anything is allocated. The reader is four modules, one concept each:

    torch_archive   the container: the file's first bytes (zip, or a format we refuse
                    with a reason: legacy, tar, bare pickle) and the zip, read with our
                    own bounds checks (entries inside the file, none overlapping, none
                    inflated past its declared size or past what deflate can give)
    torch_pickle    the restricted unpickler: an allowlist of (module, name) globals
                    mapped to our rebuild functions, modules that reach the interpreter,
                    the OS or the network refused, anything else an inert
                    ``Placeholder``; the opcodes walked first, running nothing
    torch_records   what the pickle builds: inert records (storages, tensors to rebuild,
                    numpy dtypes and arrays), ``Placeholder``, the element types
    torch_tensors   the finaliser: each storage read once, every tensor's size, stride
                    and offset checked inside its storage before a view is taken, what
                    the tensors take bounded by the storage bytes the file holds, each
                    view copied into a NumPy array

Every size is bounded before it is read: the entries by ``fileio.max_bytes()`` in all
(4 GiB unless ``$SRIGL_NP_MAX_BYTES`` says more), data.pkl by ``MAX_PICKLE_BYTES`` and
what its opcodes would build by ``torch_pickle.MAX_PICKLE_COST``, the tensors by 4x
the storage bytes the file holds.

Every refusal is a ``TorchFormatError`` with one line naming the file and the problem.
"""

import os

from .torch_archive import _Archive, _byteorder, _check_head
from .torch_pickle import MAX_PICKLE_BYTES, _check_protocol, _unpickle
from .torch_records import Placeholder, _Malformed, _one_line, is_placeholder
from .torch_tensors import _Finalizer

__all__ = ["Placeholder", "TorchFormatError", "is_placeholder", "load"]


class TorchFormatError(ValueError):
    """A file that is not a readable PyTorch checkpoint, or one we refuse to read."""


def load(path):
    """The object graph in the PyTorch checkpoint at ``path``, with NumPy arrays for tensors.

    Tensors and nn.Parameters become arrays of their dtype (bfloat16 widened to float32),
    shape and values; dicts and OrderedDicts become dicts in their order (a state_dict's
    ``_metadata`` is dropped); torch.Size becomes a tuple, torch.device a string such as
    "cuda:0"; lists, tuples, str, bytes, numbers, bool and None stay themselves; every
    other class or callable becomes an inert ``Placeholder``. Raises TorchFormatError,
    naming the file, for anything unreadable or unsafe.
    """
    path = os.fspath(path)
    try:
        return _load(path)
    except _Malformed as error:
        raise TorchFormatError(f"{path}: {error}") from None
    except MemoryError:   # the bounds below should make this unreachable; never a traceback
        raise TorchFormatError(f"{path}: needs more memory than there is to read") from None


def _load(path):
    if not os.path.exists(path):
        raise _Malformed("no such file")
    if os.path.isdir(path):
        raise _Malformed("is a directory, not a checkpoint file (torch.distributed.checkpoint "
                         "folders are not supported)")
    if not os.path.isfile(path):
        raise _Malformed("is not a regular file")
    try:
        file = open(path, "rb")
    except OSError as error:
        raise _Malformed(f"cannot be opened ({_one_line(error)})") from None
    with file:
        file_size = os.fstat(file.fileno()).st_size
        head = file.read(512)
        _check_head(head)
        file.seek(0)
        archive = _Archive(file, file_size)
        if archive.has("constants.pkl") or any(name.startswith("code/")
                                                for name in archive.entries):
            raise _Malformed("is a TorchScript archive (torch.jit.save); load it with "
                             "torch.jit.load and torch.save its state_dict()")
        if not archive.has("data.pkl"):
            raise _Malformed(f"zip archive has no {archive.top or '<top>'}/data.pkl, so it is "
                             f"not a torch.save checkpoint")
        byteorder = _byteorder(archive)
        pickle_bytes = archive.entries["data.pkl"].file_size
        if pickle_bytes > MAX_PICKLE_BYTES:
            raise _Malformed(f"data.pkl declares {pickle_bytes} bytes, more than the "
                             f"{MAX_PICKLE_BYTES} a checkpoint's object graph takes")
        data = archive.read("data.pkl")
        _check_protocol(data)
        graph = _unpickle(data)
        try:
            return _Finalizer(archive, byteorder)(graph)
        except RecursionError:
            raise _Malformed("object graph nests too deeply") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as error:
            # e.g. an array as a dict key, or a set of them
            raise _Malformed(f"object graph cannot be rebuilt ({type(error).__name__}: "
                             f"{_one_line(error)})") from None
