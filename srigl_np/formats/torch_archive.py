"""The container of a PyTorch file: its first bytes and its zip, read with bounds checks.

``_check_head`` tells the zip format ``torch.save`` writes from what it is not (the
legacy pickle and tar formats, a bare pickle, anything else) and refuses those with a
reason. ``_Archive`` reads the zip with bounds checks of our own: every entry must fit
in the file and no two may overlap, the entries may declare at most
``fileio.max_bytes()`` in all, no entry is read past the size the central directory
declares, and a compressed entry may not declare more than deflate can give and is
inflated at most to that size. ``present_bytes`` (the storage bytes the file holds)
and ``inflation`` (what reading a compressed storage would add) let the finaliser
bound what tensors take by what the file holds.
"""

import struct
import zipfile
import zlib

import numpy as np

from ..fileio import over_max_bytes
from .torch_records import _Malformed, _one_line

_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_MAX_DEFLATE_RATIO = 1032       # deflate cannot do better; a bigger claim is a lie


class _Archive:
    """The zip, read with our own bounds checks. ``top`` is the archive's one folder.

    Every entry's declared sizes are checked against the file before anything is read:
    a stored entry must fit in the file, a compressed one may not claim more than deflate
    can give, and no two entries may share bytes (overlapping entries are how a small zip
    makes a reader allocate many times its size)."""

    def __init__(self, file, file_size):
        self.file, self.file_size = file, file_size
        try:
            self.zip = zipfile.ZipFile(file)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                struct.error, OverflowError, NotImplementedError) as error:
            raise _Malformed(f"truncated or damaged zip archive ({_one_line(error)})") from None
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise _Malformed("zip archive holds the same entry name twice")
        tops = set()
        for name in names:
            top, slash, _ = name.partition("/")
            if not slash:
                raise _Malformed(f"zip entry {name!r:.80} is not inside a top folder")
            tops.add(top)
        if len(tops) > 1:
            shown = ", ".join(repr(top) for top in sorted(tops)[:5])
            raise _Malformed(f"zip archive has several top folders ({shown}); a torch.save "
                             f"checkpoint has one")
        self.top = tops.pop() if tops else ""
        self.entries = {info.filename.partition("/")[2]: info for info in infos}
        for info in infos:
            self._check_declared(info)
        reason = over_max_bytes(sum(info.file_size for info in infos), "its entries declare")
        if reason:
            raise _Malformed(reason)
        previous_end, previous = 0, None
        for info in sorted(infos, key=lambda info: info.header_offset):
            if info.header_offset < previous_end:
                raise _Malformed(f"zip entries {previous!r:.80} and {info.filename!r:.80} "
                                 f"overlap (a zip bomb?)")
            previous_end, previous = info.header_offset + 30 + info.compress_size, info.filename
        self.storages = {}

    def _check_declared(self, info):
        name = f"entry {info.filename!r:.80}"
        if info.flag_bits & 0x1:
            raise _Malformed(f"{name} is encrypted")
        if info.header_offset + 30 + info.compress_size > self.file_size:
            raise _Malformed(f"{name} declares {info.compress_size} bytes at offset "
                             f"{info.header_offset}, past the end of the {self.file_size}-byte "
                             f"file (truncated?)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise _Malformed(f"stored {name} declares {info.compress_size} bytes stored but "
                             f"{info.file_size} bytes of content")
        if (info.compress_type != zipfile.ZIP_STORED
                and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024):
            raise _Malformed(f"compressed {name} declares an absurd {info.file_size} bytes "
                             f"from {info.compress_size} compressed bytes")

    def has(self, name):
        return name in self.entries

    def read(self, name, nbytes=None, *, writable=False):
        """The first ``nbytes`` bytes of ``<top>/<name>`` (all of it when None): bytes, or
        with ``writable`` a stored entry's bytes read straight into a new uint8 array (a
        tensor can then be a view of it, not a copy)."""
        info = self.entries[name]
        full = f"{self.top}/{name}"
        if nbytes is None:
            nbytes = info.file_size
        if info.file_size < nbytes:
            raise _Malformed(f"entry {full} holds {info.file_size} bytes, fewer than the "
                             f"{nbytes} it should")
        if info.compress_type == zipfile.ZIP_STORED:
            return self._read_stored(info, full, nbytes, writable)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            return self._read_deflated(info, full, nbytes)
        raise _Malformed(f"entry {full} uses zip compression method {info.compress_type}; "
                         f"only stored and deflated entries are read")

    def _read_stored(self, info, full, nbytes, writable=False):
        self.file.seek(info.header_offset)
        header = self.file.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise _Malformed(f"entry {full} has no local zip header (damaged archive)")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > self.file_size:
            raise _Malformed(f"entry {full} declares {info.file_size} bytes, past the end of "
                             f"the {self.file_size}-byte file (truncated?)")
        self.file.seek(start)
        if writable:
            data = np.empty(nbytes, dtype=np.uint8)
            read = self.file.readinto(memoryview(data))
        else:
            data = self.file.read(nbytes)
            read = len(data)
        if read != nbytes:
            raise _Malformed(f"entry {full} is truncated")
        # torch writes CRC 0 when compute_crc32 is off: nothing to check then.
        if nbytes == info.file_size and info.CRC and zlib.crc32(data) != info.CRC:
            raise _Malformed(f"entry {full} fails its CRC check (damaged file)")
        return data

    def _read_deflated(self, info, full, nbytes):
        try:
            # zipfile inflates no further than the declared size and checks the CRC at its end.
            with self.zip.open(info) as entry:
                data = entry.read(nbytes)
        except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError,
                NotImplementedError) as error:
            raise _Malformed(f"entry {full} is damaged ({_one_line(error)})") from None
        if len(data) != nbytes:
            raise _Malformed(f"entry {full} is truncated")
        return data

    def storage(self, ref):
        """The bytes of storage ``ref.key``, read once and shared by the tensors viewing it:
        a writable uint8 array for a stored entry (as torch writes them), bytes for a
        compressed one."""
        if ref.key not in self.storages:
            name = f"data/{ref.key}"
            if not self.has(name):
                raise _Malformed(f"storage entry {self.top}/{name} is missing")
            self.storages[ref.key] = self.read(name, ref.nbytes, writable=True)
        data = self.storages[ref.key]
        if len(data) < ref.nbytes:
            raise _Malformed(f"storage {self.top}/data/{ref.key} holds {len(data)} bytes, "
                             f"fewer than the {ref.nbytes} declared for it")
        return data

    def present_bytes(self):
        """The storage bytes the file holds: its data/ entries as stored (compressed)."""
        return sum(info.compress_size for name, info in self.entries.items()
                   if name.startswith("data/"))

    def inflation(self, ref):
        """The bytes reading storage ``ref`` would add beyond what the file holds: its
        size, for a compressed storage not read yet; 0 otherwise."""
        info = self.entries.get(f"data/{ref.key}")
        if ref.key in self.storages or info is None or info.compress_type == zipfile.ZIP_STORED:
            return 0
        return ref.nbytes


def _check_head(head):
    if not head:
        raise _Malformed("is empty")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return
    if head[0] == 0x80 and b"\x8a\x0a" + _LEGACY_MAGIC in head[:32]:
        raise _Malformed("is a legacy PyTorch file (the pre-1.6 format, or saved with "
                         "_use_new_zipfile_serialization=False), which is not supported; "
                         "convert it with a current torch: torch.save(torch.load(f), g)")
    if head[257:262] == b"ustar":
        raise _Malformed("is a tar archive: the legacy PyTorch tar format (before 0.4) is not "
                         "supported; convert it with torch.save(torch.load(f), g)")
    if head[0] == 0x80:
        raise _Malformed("is a bare pickle, not a PyTorch zip checkpoint; bare pickles are not "
                         "read")
    raise _Malformed(f"is not a PyTorch checkpoint (not a zip archive; starts with "
                     f"{head[:8]!r})")


def _byteorder(archive):
    if not archive.has("byteorder"):
        return "little"
    if archive.entries["byteorder"].file_size > 16:
        raise _Malformed("byteorder entry is too long")
    byteorder = archive.read("byteorder")
    if byteorder not in (b"little", b"big"):
        raise _Malformed(f"unknown byteorder {byteorder!r}, expected 'little' or 'big'")
    return byteorder.decode()
