"""Writing .npz files that lie: .npy bytes and headers, raw deflate, a zip whose headers
declare whatever a test says, a deflated member of zeros that inflates far past its
size; and ``peak_bytes``, what reading one costs. Shared by the tests of every .npz
reader (and of the other readers that must refuse a small file before it costs memory)."""

import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np


def npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape, dtype="<f4"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def deflate(data):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)   # raw deflate, as zip holds it
    return compressor.compress(data) + compressor.flush()


def write_zip(path, members):
    """A zip whose headers declare what ``members`` says, true or not: each member is
    (name, bytes as stored, method, declared size, crc[, offset of its local header]);
    the declared size may be a pair (size, stored size) to lie about both. A size of
    4 GiB or more is written as zip64 does (both sizes in its extra field), which is
    how a small file claims terabytes."""
    body, central = bytearray(), bytearray()
    for name, stored, method, size, crc, *offset in members:
        encoded = name.encode()
        at = offset[0] if offset else len(body)
        size, stored_size = size if isinstance(size, tuple) else (size, len(stored))
        sizes, extra = (stored_size, size), b""
        if max(size, stored_size) >= 0xFFFFFFFF:
            sizes, extra = (0xFFFFFFFF, 0xFFFFFFFF), struct.pack("<HHQQ", 1, 16, size,
                                                                 stored_size)
        if not offset:
            body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0, crc,
                                *sizes, len(encoded), len(extra)) + encoded + extra + stored
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0,
                               crc, *sizes, len(encoded), len(extra), 0, 0, 0, 0,
                               at) + encoded + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                      len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def add_zeros(path, name, nbytes, header=b""):
    """Append to the zip at ``path`` a deflated member ``name``: ``header`` then
    ``nbytes`` zero bytes, written in chunks (a few kB on disk that inflate to
    ``nbytes``; ``npy_header`` makes it a .npy array)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            member.write(header)
            for start in range(0, nbytes, len(chunk)):
                member.write(chunk[:min(len(chunk), nbytes - start)])
    return path


def replace_with_zeros(source, path, name, nbytes, header=b"", drop=()):
    """A copy at ``path`` of the zip ``source`` whose member ``name`` is replaced by
    ``add_zeros``' deflated one (members in ``drop`` left out); returns ``path``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as copy:
        for info in original.infolist():
            if info.filename != name and info.filename not in drop:
                copy.writestr(info, original.read(info))
    return add_zeros(path, name, nbytes, header)


def peak_bytes(call, expected=ValueError):
    """(the exception ``call()`` raises, of type ``expected``, or None when it returns;
    the peak bytes Python and NumPy allocated meanwhile, by tracemalloc)."""
    tracemalloc.start()
    try:
        try:
            call()
            raised = None
        except expected as error:
            raised = error
        return raised, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
