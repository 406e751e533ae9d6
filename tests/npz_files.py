"""Writing .npz files that lie: .npy bytes and headers, raw deflate, and a zip whose headers
declare whatever a test says. Shared by the tests of every .npz reader."""

import io
import struct
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
    (name, bytes as stored, method, declared size, crc[, offset of its local header])."""
    body, central = bytearray(), bytearray()
    for name, stored, method, size, crc, *offset in members:
        encoded = name.encode()
        at = offset[0] if offset else len(body)
        if not offset:
            body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc,
                                len(stored), size, len(encoded), 0) + encoded + stored
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0,
                               crc, len(stored), size, len(encoded), 0, 0, 0, 0, 0,
                               at) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                      len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path
