"""The one .npz reader: every member checked against what it declares before it is read.

``np.savez`` writes a zip of ``<key>.npy`` members. ``np.load`` reads one back trusting
the sizes the zip and each .npy header declare, so a small file can make it allocate
gigabytes. ``NpzReader(path)`` is how srigl_np opens every .npz (training checkpoints,
condensed models, scipy.sparse matrices), and it trusts nothing, in this order:

1. The file is a zip archive. A lone .npy array, a pickle or anything else is refused
   with what it is; nothing is ever unpickled.
2. Every member is named ``<key>.npy``, once, unencrypted, stored or deflated.
3. A member's declared size is what its bytes can hold: a stored member holds exactly
   its stored bytes, a deflated one at most ``MAX_DEFLATE_RATIO`` times them (deflate
   cannot do better than about 1032:1, so a bigger claim is a lie), its bytes lie
   inside the file, and no two members share bytes (overlapping members are how a
   small zip inflates many times over).
4. The members declare at most ``fileio.max_bytes()`` in all (4 GiB unless
   ``$SRIGL_NP_MAX_BYTES`` says more).
5. Its .npy header (version 1.0 or 2.0, at most ``MAX_HEADER_SIZE`` bytes) declares a
   dtype without Python objects and a shape whose bytes, after the header, are exactly
   the member's declared size.

Only then is ``members`` ({key: Member}, each member's declared shape and dtype)
there to see, so that a caller who knows what the file should hold (a checkpoint's
model, a condensed model's stages) refuses a stray member, or one of the wrong shape,
before any is read; ``read(key)`` then reads one, through ``zipfile``, which inflates
no further than the declared size and checks the CRC at the end. ``read_npz(path)``
reads them all.

Every refusal is an ``NpzError``, a ValueError of one line naming the file and, when
one is to blame, the member; its ``reason`` is the line without the file, for callers
that say which kind of file they expected.
"""

import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from ..fileio import MAX_JSON_CHARS, over_max_bytes, parse_json

# Deflate cannot compress by more than about 1032:1; a member claiming more is a lie.
MAX_DEFLATE_RATIO = 1100
# np.load's own limit on a .npy header (larger ones are not safe to parse).
MAX_HEADER_SIZE = 10000

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
# What zipfile and zlib raise on a damaged member, besides ValueError (and zipfile's
# NotImplementedError for a member flagged as patched data or strongly encrypted).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


class NpzError(ValueError):
    """An .npz file that cannot be read safely: ``str`` is "<path>: <reason>"."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Member:
    """What a member's .npy header declares: the array it holds, before it is read."""
    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize


class NpzReader:
    """The .npz at ``path`` (a path or a binary file object), every member checked as the
    module docstring says: ``members`` {key: Member} in the archive's order, ``read(key)``
    the array ``np.load(path, allow_pickle=False)[key]`` gives. A context manager;
    NpzError for anything unsafe or unreadable."""

    def __init__(self, path):
        self.path = path
        try:
            self._file = open(path, "rb") if _is_path(path) else path
        except OSError as exc:
            raise NpzError(path, _one_line(exc)) from None
        try:
            self._archive = self._open()
        except BaseException:
            self._close_file()
            raise

    def _open(self):
        path, file = self.path, self._file
        _check_head(path, file)
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                struct.error, OverflowError, NotImplementedError, MemoryError) as exc:
            raise NpzError(path, f"not an .npz archive ({_one_line(exc)})") from None
        try:
            infos = archive.infolist()
            for info in infos:
                _check_entry(path, info)
            _check_unique(path, infos)
            _check_inside(path, infos, _file_size(file))
            reason = over_max_bytes(sum(info.file_size for info in infos), "its members declare")
            if reason:
                raise NpzError(path, reason)
            self._infos = {info.filename[:-len(".npy")]: info for info in infos}
            self.members = {key: _check_header(path, archive, info)
                            for key, info in self._infos.items()}
        except BaseException:
            archive.close()
            raise
        return archive

    def read(self, key):
        """The array of member ``key`` (KeyError for a key not in ``members``)."""
        info = self._infos[key]
        try:
            with self._archive.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False,
                                                max_header_size=MAX_HEADER_SIZE)
        except _DAMAGED + (ValueError,) as exc:   # ValueError: "EOF: reading array data"
            raise NpzError(self.path, _damaged(info.filename, exc)) from None
        except MemoryError:
            raise NpzError(self.path, f"member {info.filename!r} declares "
                                      f"{self.members[key].nbytes} bytes, more memory than "
                                      f"there is") from None

    def read_json(self, key, where):
        """The JSON held by member ``key``, a str scalar (a checkpoint's meta, a condensed
        model's metadata): its dtype and declared length checked before it is read, then
        parsed by ``fileio.parse_json``. One ValueError starting with ``where`` (e.g.
        "model.npz: metadata") for a member of another kind, more than MAX_JSON_CHARS
        characters, nesting too deep, or text that is not JSON."""
        declared = self.members[key]
        if declared.shape != () or declared.dtype.kind != "U":
            raise ValueError(f"{where} must be a JSON string, got a {declared.dtype} array "
                             f"of shape {declared.shape}")
        if declared.dtype.itemsize // 4 > MAX_JSON_CHARS:
            raise ValueError(f"{where} declares {declared.dtype.itemsize // 4} characters "
                             f"of JSON, more than the {MAX_JSON_CHARS} srigl_np reads")
        try:
            return parse_json(str(self.read(key)), where)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON ({exc})") from None

    def close(self):
        self._archive.close()
        self._close_file()

    def _close_file(self):
        if self._file is not self.path:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_npz(path):
    """{key: array} of the .npz at ``path`` (a path or a binary file object), every
    member checked as the module docstring says before any is read; the arrays are
    what ``np.load(path, allow_pickle=False)`` gives. NpzError otherwise."""
    with NpzReader(path) as npz:
        return {key: npz.read(key) for key in npz.members}


def _file_size(file):
    position = file.tell()
    size = file.seek(0, os.SEEK_END)
    file.seek(position)
    return size


def _is_path(path):
    return isinstance(path, (str, bytes, os.PathLike))


def _one_line(exc):
    # Bounded: numpy quotes a header it cannot parse, and a header may be 10000 bytes.
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _check_head(path, file):
    """Refuse what is not a zip by its first bytes, as np.load tells them apart."""
    start = file.tell()
    head = file.read(len(np.lib.format.MAGIC_PREFIX))
    file.seek(start)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return
    if not head:
        raise NpzError(path, "not an .npz archive (it is empty)")
    if head == np.lib.format.MAGIC_PREFIX:
        raise NpzError(path, "it holds one .npy array, not an .npz archive")
    raise NpzError(path, "not an .npz archive (it is neither a zip of .npy arrays nor one "
                         ".npy array; srigl_np never unpickles)")


def _check_entry(path, info):
    """The zip entry alone: name, encryption, compression and declared size."""
    name = info.filename
    if not name.endswith(".npy"):
        raise NpzError(path, f"member {name!r} is not a .npy array")
    if info.flag_bits & 0x1:
        raise NpzError(path, f"member {name!r} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        limit = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        limit = info.compress_size * MAX_DEFLATE_RATIO + 1024
    else:
        raise NpzError(path, f"member {name!r} uses zip compression method "
                             f"{info.compress_type}; only stored and deflated members "
                             f"are read")
    if info.file_size > limit:
        raise NpzError(path, f"member {name!r} declares {info.file_size} bytes, more than "
                             f"its {info.compress_size} stored bytes can hold")


def _check_inside(path, infos, file_size):
    """Every member's bytes lie inside the file, and no two members share any."""
    # A member's bytes start after its 30-byte local header (and its name), so an
    # honest archive never has one member's header inside the bytes of the one before.
    previous_end, previous = 0, None
    for info in sorted(infos, key=lambda info: info.header_offset):
        if info.header_offset < previous_end:
            raise NpzError(path, f"members {previous!r} and {info.filename!r} overlap "
                                 f"(a zip bomb?)")
        previous_end, previous = info.header_offset + 30 + info.compress_size, info.filename
        if previous_end > file_size:
            raise NpzError(path, f"member {info.filename!r} declares {info.compress_size} "
                                 f"bytes at offset {info.header_offset}, past the end of the "
                                 f"{file_size}-byte file (truncated?)")


def _check_unique(path, infos):
    seen = set()
    for info in infos:
        if info.filename in seen:
            raise NpzError(path, f"member {info.filename!r} appears twice")
        seen.add(info.filename)


def _check_header(path, archive, info):
    """The member's .npy header, read by inflating its first bytes only."""
    name = info.filename
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            header = (_HEADER_READERS[version](member, max_header_size=MAX_HEADER_SIZE)
                      if version in _HEADER_READERS else None)
            header_end = member.tell()
    except _DAMAGED as exc:   # a small member is read whole here, CRC check included
        raise NpzError(path, _damaged(name, exc)) from None
    except ValueError as exc:   # what numpy says of a header it cannot parse
        raise NpzError(path, f"member {name!r}: {_one_line(exc)}") from None
    if header is None:
        raise NpzError(path, f"member {name!r}: unsupported .npy version {version}")
    shape, _, dtype = header
    if dtype.hasobject:
        raise NpzError(path, f"member {name!r} holds Python objects")
    if len(shape) > 64:   # NumPy's limit (and a bound on the shape this message shows)
        raise NpzError(path, f"member {name!r}: its .npy header declares {len(shape)} "
                             f"dimensions, at most 64 can be read")
    if any(n < 0 for n in shape):
        raise NpzError(path, f"member {name!r}: its .npy header declares shape {shape}, "
                             f"with a negative dimension")
    data = math.prod(shape) * dtype.itemsize
    if header_end + data != info.file_size:
        raise NpzError(path, f"member {name!r}: its .npy header declares shape {shape} of "
                             f"{dtype} ({data} bytes), but the member holds "
                             f"{info.file_size - header_end}")
    return Member(tuple(shape), dtype)


def _damaged(name, exc):
    return f"member {name!r} is damaged ({_one_line(exc)})"
