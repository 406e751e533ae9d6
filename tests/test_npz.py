"""The one .npz reader (srigl_np.formats.npz): what np.savez writes reads back as np.load
gives it; every file that lies about its members is one line of ValueError naming the
file and the member, refused before the lie costs memory."""

import io
import pickle
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npz_files import add_zeros, deflate, npy, npy_header, peak_bytes, write_zip
from srigl_np.formats import npz as npz_module
from srigl_np.formats.npz import MAX_DEFLATE_RATIO, NpzError, read_npz

DTYPES = ["bool", "uint8", "int16", "<i4", ">i8", "float16", "<f4", ">f8", "complex64",
          "S3", "<U5"]


def refusal(path, *parts):
    """read_npz(path) raises one line of NpzError (a ValueError) naming the file and
    holding every one of ``parts``; returns its reason."""
    with pytest.raises(ValueError) as error:
        read_npz(path)
    message = str(error.value)
    assert isinstance(error.value, NpzError) and "\n" not in message
    assert message == f"{path}: {error.value.reason}"
    for part in parts:
        assert part in message
    return error.value.reason


# --- what np.savez writes reads back as np.load gives it -----------------------------------

@given(arrays=st.lists(hnp.arrays(st.sampled_from(DTYPES),
                                  hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                   max_side=4)), max_size=4),
       compressed=st.booleans(), fortran=st.booleans())
def test_property_read_npz_gives_what_np_load_gives(tmp_path_factory, arrays, compressed,
                                                    fortran):
    path = tmp_path_factory.mktemp("npz") / "a.npz"
    saved = {f"k{i}/x": np.asfortranarray(a) if fortran else a for i, a in enumerate(arrays)}
    (np.savez_compressed if compressed else np.savez)(path, **saved)
    read = read_npz(path)
    with np.load(path, allow_pickle=False) as expected:
        assert list(read) == expected.files
        for key in expected.files:
            want = expected[key]
            assert read[key].dtype == want.dtype and read[key].shape == want.shape
            assert read[key].tobytes(order="A") == want.tobytes(order="A")
            assert read[key].flags.f_contiguous == want.flags.f_contiguous


def test_read_npz_takes_a_file_object_and_an_empty_archive(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array("{}"), w=np.arange(6.0).reshape(2, 3))
    buffer.seek(0)
    read = read_npz(buffer)
    assert str(read["meta"]) == "{}" and read["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    np.savez(tmp_path / "empty.npz")
    assert read_npz(tmp_path / "empty.npz") == {}


# --- the four lies of the issue ------------------------------------------------------------

def test_a_header_claiming_more_than_the_member_holds_is_refused(tmp_path):
    """A 128-byte member whose .npy header claims 4 PiB: np.load would try to allocate."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", npy_header((2**40, 2**20)))
    refusal(path, "member 'w.npy'", "declares shape (1099511627776, 1048576) of float32",
            "but the member holds 0")


def test_a_deflated_member_claiming_more_than_deflate_can_give_is_refused(tmp_path):
    """1 KiB of deflate that claims to be a 1 GiB array, npy header and zip header agreeing:
    only the deflate ratio gives the lie away, before anything is inflated."""
    header = npy_header((2**28,))
    stored = deflate(header + bytes(1 << 20))
    size = len(header) + 2**30
    assert size > len(stored) * MAX_DEFLATE_RATIO + 1024
    path = write_zip(tmp_path / "bomb.npz", [("w.npy", stored, 8, size, 0)])
    refusal(path, f"member 'w.npy' declares {size} bytes, more than its {len(stored)} "
                  f"stored bytes can hold")


def test_an_object_member_is_refused_without_unpickling_it(tmp_path, monkeypatch):
    path = tmp_path / "objects.npz"
    np.savez(path, meta=np.array([{"a": 1}], dtype=object))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    reason = refusal(path, "member 'meta.npy' holds Python objects")
    assert "allow_pickle" not in reason


def test_a_truncated_member_is_refused(tmp_path):
    payload = npy(np.random.default_rng(0).random(4096))   # incompressible
    stored = deflate(payload)
    path = write_zip(tmp_path / "truncated.npz",
                     [("w.npy", stored[:len(stored) // 2], 8, len(payload),
                       zlib.crc32(payload))])
    refusal(path, "member 'w.npy' is damaged (")


def test_a_stored_member_cut_short_is_refused(tmp_path):
    payload = npy(np.arange(100, dtype=np.int64))
    path = write_zip(tmp_path / "cut.npz", [("w.npy", payload[:-40], 0, len(payload),
                                             zlib.crc32(payload))])
    refusal(path, "member 'w.npy'")


# --- the other rules -----------------------------------------------------------------------

def test_nothing_is_inflated_past_the_declared_size(tmp_path):
    """A member whose deflate stream holds 64 MiB behind a 4-byte array: the reader
    stops where the headers say the member ends."""
    header = npy_header((1,))
    stored = deflate(header + bytes(4) + bytes(64 << 20))
    path = write_zip(tmp_path / "long.npz",
                     [("w.npy", stored, 8, len(header) + 4, zlib.crc32(header + bytes(4)))])
    tracemalloc.start()
    try:
        read = read_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read["w"].tolist() == [0.0] and peak < 8 << 20


def test_overlapping_members_are_refused(tmp_path):
    payload = npy(np.zeros(1000))
    crc = zlib.crc32(payload)
    path = write_zip(tmp_path / "overlap.npz", [("a.npy", payload, 0, len(payload), crc),
                                                ("b.npy", payload, 0, len(payload), crc, 0)])
    refusal(path, "members 'a.npy' and 'b.npy' overlap")


@pytest.mark.parametrize("write, parts", [
    (lambda p: p.write_bytes(b""), ["not an .npz archive (it is empty)"]),
    (lambda p: p.write_bytes(b"epoch,loss\n1,0.5\n"),
     ["not an .npz archive", "srigl_np never unpickles"]),
    (lambda p: p.write_bytes(pickle.dumps({"meta": 1})), ["srigl_np never unpickles"]),
    (lambda p: p.write_bytes(npy(np.zeros(3))), ["it holds one .npy array, not an .npz"]),
    (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), ["not an .npz archive ("]),
])
def test_what_is_not_a_zip_is_refused_with_what_it_is(tmp_path, write, parts):
    path = tmp_path / "x.npz"
    write(path)
    reason = refusal(path, *parts)
    assert "allow_pickle" not in reason


def test_a_missing_file_is_an_npz_error(tmp_path):
    refusal(tmp_path / "missing.npz", "No such file or directory")


def test_each_member_must_be_one_npy_array_stored_or_deflated(tmp_path):
    payload = npy(np.zeros(3))
    crc = zlib.crc32(payload)
    cases = [
        ([("w.txt", payload, 0, len(payload), crc)], "member 'w.txt' is not a .npy array"),
        ([("w.npy", payload, 0, len(payload), crc), ("w.npy", payload, 0, len(payload), crc)],
         "member 'w.npy' appears twice"),
        ([("w.npy", payload, 12, len(payload), crc)],
         "member 'w.npy' uses zip compression method 12; only stored and deflated"),
        ([("w.npy", payload, 0, len(payload) + 1, crc)], "member 'w.npy' declares"),
        ([("w.npy", b"\x93NUMPY\x09\x00" + payload[8:], 0, len(payload),
           zlib.crc32(b"\x93NUMPY\x09\x00" + payload[8:]))],
         "member 'w.npy': unsupported .npy version (9, 0)"),
        ([("w.npy", b"NOTNUMPY" + payload[8:], 0, len(payload),
           zlib.crc32(b"NOTNUMPY" + payload[8:]))], "member 'w.npy': the magic string"),
    ]
    for i, (members, part) in enumerate(cases):
        refusal(write_zip(tmp_path / f"case{i}.npz", members), part)


def test_a_member_failing_its_crc_is_refused(tmp_path):
    payload = npy(np.arange(10.0))
    path = write_zip(tmp_path / "crc.npz", [("w.npy", payload, 0, len(payload),
                                             zlib.crc32(payload) ^ 1)])
    refusal(path, "member 'w.npy' is damaged (", "CRC")


def test_a_negative_dimension_or_too_many_are_refused(tmp_path):
    path = tmp_path / "negative.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", npy_header((-1, -4)) + bytes(16))
    refusal(path, "member 'w.npy': its .npy header declares shape (-1, -4)")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", npy_header((1,) * 3000) + bytes(4))
    assert len(refusal(path, "declares 3000 dimensions, at most 64")) < 200


# --- what the members may declare in all, and where their bytes lie ------------------------

@pytest.mark.parametrize("method, words", [(0, "past the end of the"), (8, "more than its")])
def test_a_member_declaring_terabytes_is_one_line(tmp_path, method, words):
    """A zip64 entry claims 4 TiB (its .npy header agreeing) in a file of a few hundred
    bytes: a stored one also claims 4 TiB of stored bytes, which np.load, and this
    reader before, believed until allocating the array raised MemoryError."""
    header = npy_header((1 << 40,))
    payload = header + bytes(64)
    stored = payload if method == 0 else deflate(payload)
    size = len(header) + (4 << 40)
    path = write_zip(tmp_path / "tb.npz",
                     [("meta.npy", stored, method, (size, size if method == 0 else len(stored)),
                       0)])
    error, peak = peak_bytes(lambda: read_npz(path))
    assert isinstance(error, NpzError) and "\n" not in str(error) and peak < 1 << 20
    assert words in str(error)


def test_the_members_may_declare_at_most_max_bytes_in_all(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.zeros(100), b=np.zeros(100))
    monkeypatch.setenv("SRIGL_NP_MAX_BYTES", "1000")
    reason = refusal(path, "its members declare 1", "bytes in all, more than the 1000 bytes "
                     "srigl_np reads from one file", "SRIGL_NP_MAX_BYTES")
    assert "SRIGL_NP_MAX_BYTES=1G" in reason
    monkeypatch.setenv("SRIGL_NP_MAX_BYTES", "2K")
    assert read_npz(path)["a"].shape == (100,)
    monkeypatch.delenv("SRIGL_NP_MAX_BYTES")
    assert read_npz(path)["b"].shape == (100,)


def test_the_default_cap_is_4_gib(tmp_path):
    """5 MiB of deflate may honestly inflate to 5 GiB: refused by what it declares,
    before a byte of it is read (the stream is not even valid deflate)."""
    header = npy_header((5 << 30,), "|u1")
    path = write_zip(tmp_path / "big.npz",
                     [("a.npy", bytes(5 << 20), 8, len(header) + (5 << 30), 0)])
    error, peak = peak_bytes(lambda: read_npz(path))
    assert isinstance(error, NpzError) and peak < 1 << 20
    assert "declare 5368709248 bytes in all, more than the 4294967296 bytes" in str(error)
    assert "SRIGL_NP_MAX_BYTES=6G" in str(error)


def test_a_bad_max_bytes_setting_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.zeros(3))
    for text in ("lots", "0", "-5", "1.5G"):
        monkeypatch.setenv("SRIGL_NP_MAX_BYTES", text)
        with pytest.raises(ValueError, match=r"^SRIGL_NP_MAX_BYTES must be a positive number "
                                             r"of bytes, optionally with a K, M, G or T suffix"):
            read_npz(path)


def test_members_are_declared_before_any_is_read(tmp_path):
    """NpzReader checks every member and shows what each declares; read(key) inflates
    that member alone, so a caller can refuse a stray 64 MiB member without inflating it."""
    path = tmp_path / "a.npz"
    np.savez(path, w=np.arange(6.0).reshape(2, 3))
    add_zeros(path, "stray.npy", 64 << 20, npy_header((16 << 20,)))

    def read_w():
        with npz_module.NpzReader(path) as npz:
            assert npz.members["stray"] == npz_module.Member((16 << 20,), np.dtype("<f4"))
            assert npz.members["stray"].nbytes == 64 << 20 and npz.members["w"].ndim == 2
            np.testing.assert_array_equal(npz.read("w"), np.arange(6.0).reshape(2, 3))
    error, peak = peak_bytes(read_w)
    assert error is None and peak < 2 << 20


def test_running_out_of_memory_reading_a_member_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    np.savez(path, w=np.zeros(3))

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    refusal(path, "member 'w.npy' declares 24 bytes, more memory than there is")


@pytest.mark.parametrize("flag", [1 << 5, 1 << 6])
def test_a_member_flagged_patched_or_strongly_encrypted_is_one_line(tmp_path, flag):
    """zipfile raises NotImplementedError opening such a member (found by fuzzing)."""
    payload = npy(np.zeros(3))
    path = write_zip(tmp_path / "flag.npz", [("w.npy", payload, 0, len(payload),
                                              zlib.crc32(payload))])
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 8:central + 10] = flag.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    refusal(path, "member 'w.npy' is damaged (")
