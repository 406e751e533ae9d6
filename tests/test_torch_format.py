"""Tests for srigl_np/formats/torch_format.py: reading torch checkpoints without torch, safely.

Without torch (as in CI) files come from tests/torch_files.py, which writes torch's zip
layout itself: round trips for every dtype, shape, layout, byte order, protocol and top
folder; every malformed file refused with its reason; malicious pickles refused with the
payload proven not to have run; unknown classes kept as inert placeholders. With torch
(each such test calls pytest.importorskip("torch")), files written by torch.save are
compared array by array with torch.load(weights_only=True).
"""

import argparse
import collections
import os
import pathlib
import pickle
import sys
import tempfile
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import torch_files as tw
from srigl_np.formats.torch_format import Placeholder, TorchFormatError, is_placeholder, load
from torch_files import Call, Global, NewObj, Parameter, PersistentId, Storage, Tensor

DTYPES = ["float32", "float64", "float16", "bool", "uint8", "int8", "int16", "int32",
          "int64", "uint16", "uint32", "uint64", "complex64", "complex128"]
ORDERED_DICT = Call(Global("collections", "OrderedDict"))
REBUILD_V2 = Global("torch._utils", "_rebuild_tensor_v2")


def random_array(dtype, shape, rng):
    """An array (0-d for shape ()) of ``dtype`` spanning its range or a wide spread."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype,
                                       endpoint=True))
    values = rng.standard_normal(shape) * 100
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return np.asarray(values.astype(dtype))


def round_trip(tmp_path, obj, **options):
    path = tw.write_torch_zip(tmp_path / "model.pt", obj, **options)
    return load(path)


def entries_with(obj, replace=None, drop=(), **options):
    entries = tw.torch_zip_entries(obj, **options)
    entries.update(replace or {})
    return {name: data for name, data in entries.items() if name not in drop}


def refusal(path, *words):
    """The one-line TorchFormatError message for ``path``, checked for ``words``."""
    with pytest.raises(TorchFormatError) as raised:
        load(path)
    message = str(raised.value)
    assert message.startswith(f"{os.fspath(path)}: "), message
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def assert_same(ours, theirs):
    """Equal arrays (dtype, shape, values incl. NaN) through dicts, lists and tuples."""
    if isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), type(ours)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
    elif isinstance(theirs, dict):
        assert type(ours) is dict and list(ours) == list(theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key])
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for mine, other in zip(ours, theirs):
            assert_same(mine, other)
    else:
        assert ours == theirs and type(ours) is type(theirs), (ours, theirs)


# -- round trips without torch ------------------------------------------------------------

@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips(tmp_path, dtype, byteorder):
    array = random_array(dtype, (3, 4), np.random.default_rng(0))
    loaded = round_trip(tmp_path, {"x": array}, byteorder=byteorder)["x"]
    assert loaded.dtype == array.dtype and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 0, 3), (1, 2, 3, 4)])
def test_shapes_including_0d_and_empty_round_trip(tmp_path, shape):
    array = random_array("float32", shape, np.random.default_rng(1))
    loaded = round_trip(tmp_path, [array])[0]
    assert isinstance(loaded, np.ndarray) and loaded.shape == shape
    np.testing.assert_array_equal(loaded, array)


@given(array=hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=4,
                                                                   min_side=0, max_side=4)),
       protocol=st.integers(2, 5), byteorder=st.sampled_from(["little", "big"]))
def test_any_array_round_trips(array, protocol, byteorder):
    with tempfile.TemporaryDirectory() as folder:
        path = tw.write_torch_zip(os.path.join(folder, "a.pt"), {"a": array},
                                  protocol=protocol, byteorder=byteorder)
        loaded = load(path)["a"]
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)


def test_bfloat16_is_widened_to_float32(tmp_path):
    values = np.array([1.0, -3.0, 0.15625, np.inf, -0.0, 2.0**100], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    for byteorder in ("little", "big"):
        loaded = round_trip(tmp_path, Tensor(Storage(bits, "bfloat16")), byteorder=byteorder)
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, values)


def test_bool_storage_bytes_other_than_0_and_1_are_true(tmp_path):
    loaded = round_trip(tmp_path, Tensor(Storage(np.array([0, 1, 2, 255], np.uint8), "bool")))
    np.testing.assert_array_equal(loaded, [False, True, True, True])


@pytest.mark.parametrize("offset, size, stride", [
    (3, (2, 3), (1, 4)),          # transposed view at an offset
    (0, (4, 5), (0, 1)),          # expanded: stride 0
    (7, (), ()),                  # 0-d tensor inside a storage
    (19, (1,), (1,)),             # the last element
    (2, (2, 2, 2), (8, 1, 3)),    # overlapping, out of order
    (20, (0, 3), (3, 1)),         # empty, offset at the end
])
def test_strides_and_offsets_follow_index_arithmetic(tmp_path, offset, size, stride):
    storage = np.arange(20, dtype=np.float64)
    loaded = round_trip(tmp_path, Tensor(storage, offset, size, stride))
    np.testing.assert_array_equal(loaded, tw.expected_view(storage, offset, size, stride))
    assert loaded.flags.writeable and loaded.flags.c_contiguous


def test_non_contiguous_arrays_round_trip(tmp_path):
    base = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    arrays = [base[0].T, base.transpose(2, 1, 0), base[:, ::2], base[..., 1]]
    for array, loaded in zip(arrays, round_trip(tmp_path, arrays)):
        np.testing.assert_array_equal(loaded, array)


def test_shared_storage_is_read_once_and_gives_independent_arrays(tmp_path):
    storage = np.arange(12, dtype=np.float32)
    rows, column = Tensor(storage, 0, (3, 4), (4, 1)), Tensor(storage, 1, (3,), (4,))
    path = tw.write_torch_zip(tmp_path / "shared.pt", {"rows": rows, "column": column})
    assert [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n] == ["archive/data/0"]
    loaded = load(path)
    np.testing.assert_array_equal(loaded["rows"], storage.reshape(3, 4))
    np.testing.assert_array_equal(loaded["column"], [1, 5, 9])
    loaded["rows"][0, 1] = -1
    assert loaded["column"][0] == 1


def test_a_state_dicts_tensors_are_held_once_not_copied_from_their_storages(tmp_path):
    import tracemalloc

    rng = np.random.default_rng(0)
    state = {f"layer{i}.weight": rng.standard_normal((256, 1024), dtype=np.float32)
             for i in range(4)}
    path = tw.write_torch_zip(tmp_path / "state.pt", state)
    tracemalloc.start()
    try:
        loaded = load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    tensor_bytes = sum(array.nbytes for array in state.values())
    assert peak < 1.2 * tensor_bytes   # a copy of each storage would take 2x
    for key, array in state.items():
        np.testing.assert_array_equal(loaded[key], array)
        assert loaded[key].flags.writeable and loaded[key].flags.c_contiguous
    loaded["layer0.weight"][0, 0] = 7.0   # each array its own storage
    assert loaded["layer1.weight"][0, 0] == state["layer1.weight"][0, 0]


def test_one_tensor_saved_twice_stays_one_array(tmp_path):
    weight = np.ones((2, 2), np.float32)
    loaded = round_trip(tmp_path, {"model": {"w": weight}, "ema": {"w": weight}})
    assert loaded["model"]["w"] is loaded["ema"]["w"]


CONTAINERS = {
    "state_dict": collections.OrderedDict([("b", np.zeros(2)), ("a", np.ones(3, np.int64))]),
    "nested": [None, True, False, 0, -5, 255, 65536, -2**31, 2**70, -2**70, 1.5, float("inf"),
               "", "naïve ✓", b"", b"\x00\xffbytes", (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
    "empty": {}, "deep": {"a": {"b": {"c": [np.array(7, np.int8)]}}},
}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_containers_round_trip_at_every_protocol(tmp_path, protocol):
    loaded = round_trip(tmp_path, CONTAINERS, protocol=protocol)
    expected = dict(CONTAINERS, state_dict=dict(CONTAINERS["state_dict"]))
    assert_same(loaded, expected)


def test_ordered_dict_becomes_dict_in_order_and_drops_metadata(tmp_path):
    state_dict = collections.OrderedDict((name, np.full(2, i, np.float32))
                                         for i, name in enumerate("zyxw"))
    state_dict._metadata = {"": {"version": 1}, "bn": {"version": 2}}
    loaded = round_trip(tmp_path, state_dict)
    assert type(loaded) is dict and list(loaded) == list("zyxw")


@pytest.mark.parametrize("top", ["archive", "model", "checkpoint_epoch_10", "x.pt"])
def test_any_top_folder_name(tmp_path, top):
    assert_same(round_trip(tmp_path, {"w": np.eye(2)}, top=top), {"w": np.eye(2)})


def test_parameters_become_arrays(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    loaded = round_trip(tmp_path, {"w": Parameter(weight), "frozen": Parameter(weight[0], False)})
    np.testing.assert_array_equal(loaded["w"], weight)
    np.testing.assert_array_equal(loaded["frozen"], weight[0])


def test_every_leaf_as_a_parameter(tmp_path):
    state = {"layer": {"weight": np.eye(3, dtype=np.float32), "bias": np.zeros(3)}}
    path = tw.write_torch_zip(tmp_path / "p.pt", state, parameters=True)
    assert b"_rebuild_parameter" in zipfile.ZipFile(path).read("archive/data.pkl")
    assert_same(load(path), state)


def test_a_bare_storage_becomes_a_flat_array(tmp_path):
    loaded = round_trip(tmp_path, Storage(np.arange(3, dtype=np.int16)))
    np.testing.assert_array_equal(loaded, [0, 1, 2])


def test_deflated_archive_reads(tmp_path):
    entries = tw.torch_zip_entries({"w": np.zeros(1000, np.float32)})
    path = tw.write_zip(tmp_path / "deflated.pt", entries, compression=zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(load(path)["w"], np.zeros(1000, np.float32))


def test_missing_byteorder_entry_means_little_endian(tmp_path):
    path = tw.write_zip(tmp_path / "m.pt", entries_with({"w": np.arange(3.)},
                                                        drop={"archive/byteorder"}))
    np.testing.assert_array_equal(load(path)["w"], [0, 1, 2])


def test_zero_crc_means_not_recorded(tmp_path):
    path = tw.write_torch_zip(tmp_path / "nocrc.pt", {"w": np.arange(3.)})
    tw.zero_crc(path, "archive/data/0")
    np.testing.assert_array_equal(load(path)["w"], [0, 1, 2])


def test_tensor_metadata_neg_and_conj_are_applied(tmp_path):
    storage = np.array([1 + 2j, 3 - 4j], np.complex64)
    loaded = round_trip(tmp_path, [Tensor(storage, metadata={"neg": True}),
                                   Tensor(storage, metadata={"conj": True})])
    np.testing.assert_array_equal(loaded[0], -storage)
    np.testing.assert_array_equal(loaded[1], np.conj(storage))


# -- pickles written by Python's own pickler ----------------------------------------------

def with_pickle(tmp_path, data_pkl, name="p.pt"):
    return tw.write_zip(tmp_path / name, entries_with({}, replace={"archive/data.pkl": data_pkl}))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_pickles_of_plain_data_read(tmp_path, protocol):
    value = {"set": {1, 2}, "frozen": frozenset({"a"}), "complex": 1 - 2j,
             "bytearray": bytearray(b"\x00\x01"), "bytes": b"\xff" * 300,
             "list": list(range(2000)), "text": "x" * 70000, "float": -0.0}
    loaded = load(with_pickle(tmp_path, pickle.dumps(value, protocol=protocol)))
    assert loaded == value
    assert all(type(loaded[key]) is type(value[key]) for key in value)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_scalars_and_arrays_in_pickles_read(tmp_path, protocol):
    value = {"f32": np.float32(1.5), "i64": np.int64(-3), "bool": np.bool_(True),
             "c128": np.complex128(1j), "matrix": np.arange(6).reshape(2, 3),
             "fortran": np.asfortranarray(np.arange(6.).reshape(2, 3)),
             "big_endian": np.arange(3, dtype=">f4"), "zero_d": np.array(2.5),
             "empty": np.zeros((0, 2), np.uint8), "dtype": np.dtype("<i2")}
    loaded = load(with_pickle(tmp_path, pickle.dumps(value, protocol=protocol)))
    for key in value:
        assert type(loaded[key]) is type(value[key]), key
        if key == "dtype":
            assert loaded[key] == value[key]
            continue
        assert np.asarray(loaded[key]).dtype == np.asarray(value[key]).dtype.newbyteorder("=")
        np.testing.assert_array_equal(loaded[key], value[key])


@pytest.mark.parametrize("value, words", [
    (np.array([1, "a"], dtype=object), ["numpy dtype 'O8'", "plain numeric"]),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), ["plain numeric"]),
    (np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), ["plain numeric"]),
])
def test_numpy_values_we_cannot_rebuild_safely_are_refused(tmp_path, value, words):
    refusal(with_pickle(tmp_path, pickle.dumps(value, protocol=2)), *words)


# -- placeholders -------------------------------------------------------------------------

def test_unknown_class_becomes_a_placeholder_with_its_state(tmp_path):
    config = NewObj(Global("omegaconf.dictconfig", "DictConfig"), (),
                    {"_content": {"lr": 0.1, "mask": np.ones(2, bool)}})
    loaded = round_trip(tmp_path, {"cfg": config})["cfg"]
    assert is_placeholder(loaded) and is_placeholder(loaded, "omegaconf.dictconfig.DictConfig")
    assert not is_placeholder(loaded, "omegaconf.listconfig.ListConfig")
    assert isinstance(loaded, Placeholder)
    assert (loaded.module, loaded.name, loaded.args) == ("omegaconf.dictconfig", "DictConfig", ())
    assert repr(loaded) == "<placeholder omegaconf.dictconfig.DictConfig>"
    assert loaded.state["_content"]["lr"] == 0.1
    np.testing.assert_array_equal(loaded.state["_content"]["mask"], [True, True])


def test_python_pickled_objects_become_placeholders(tmp_path):
    value = {"path": pathlib.PurePosixPath("runs/seed0"), "posix": pathlib.PosixPath("/tmp"),
             "args": argparse.Namespace(lr=0.1)}
    loaded = load(with_pickle(tmp_path, pickle.dumps(value, protocol=2)))
    assert is_placeholder(loaded["path"], "pathlib.PurePosixPath")
    assert loaded["path"].args == ("runs", "seed0")
    assert is_placeholder(loaded["posix"], "pathlib.PosixPath")
    assert loaded["posix"].args == ("/", "tmp")
    assert is_placeholder(loaded["args"], "argparse.Namespace")
    assert loaded["args"].state == {"lr": 0.1}


class _Items(dict):
    pass


class _Sequence(list):
    pass


def test_placeholders_record_dict_and_list_items(tmp_path):
    value = [_Items(a=1), _Sequence([1, 2])]
    loaded = load(with_pickle(tmp_path, pickle.dumps(value, protocol=2)))
    assert loaded[0].dictitems == {"a": 1} and loaded[1].listitems == [1, 2]


def test_a_referenced_global_is_a_placeholder_class_and_inert(tmp_path):
    loaded = round_trip(tmp_path, {"dtype": Global("torch", "float32"),
                                   "pathcls": Global("pathlib", "PosixPath")})
    assert is_placeholder(loaded["dtype"], "torch.float32")
    assert repr(loaded["dtype"]) == "<placeholder torch.float32>"
    made = loaded["pathcls"]("/etc/passwd")  # calling it makes a placeholder, nothing real
    assert is_placeholder(made, "pathlib.PosixPath") and made.args == ("/etc/passwd",)
    with pytest.raises(TypeError):
        made()


def test_is_placeholder_is_false_for_real_values():
    for value in (None, 1, "x", {}, np.zeros(1), np.float32(1), dict, Placeholder.__init__):
        assert not is_placeholder(value)


def test_unknown_callables_never_run(tmp_path):
    marker = tmp_path / "written"
    payloads = [
        Call(Global("pathlib", "Path.write_text"),
             (Call(Global("pathlib", "PosixPath"), (str(marker),)), "x")),
        Call(Global("numpy", "save"), (str(marker), Global("numpy", "ndarray"))),
        Call(Global("torch", "save"), ({}, str(marker))),
    ]
    for protocol in (2, 4):
        loaded = round_trip(tmp_path, payloads, protocol=protocol)
        assert all(is_placeholder(value) for value in loaded)
    assert not marker.exists()


# -- refusals: files that are not readable checkpoints ------------------------------------

def test_missing_path(tmp_path):
    refusal(tmp_path / "nothing.pt", "no such file")


def test_directory(tmp_path):
    refusal(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    refusal(tmp_path / "e.pt", "is empty")


def test_not_a_zip(tmp_path):
    (tmp_path / "t.pt").write_text("just some text, not a checkpoint")
    refusal(tmp_path / "t.pt", "not a zip archive")


def test_bare_pickle(tmp_path):
    (tmp_path / "b.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    refusal(tmp_path / "b.pkl", "bare pickle")


@pytest.mark.parametrize("protocol", [2, 4])
def test_legacy_format_is_named_with_its_conversion(tmp_path, protocol):
    data = tw.legacy_torch_bytes()
    if protocol == 4:  # the magic number as torch.save(..., pickle_protocol=4) writes it
        data = pickle.dumps(tw.LEGACY_MAGIC, protocol=4) + data
    (tmp_path / "old.pt").write_bytes(data)
    refusal(tmp_path / "old.pt", "legacy", "_use_new_zipfile_serialization=False",
            "torch.save(torch.load(f), g)")


def test_legacy_tar_format(tmp_path):
    import tarfile
    with tarfile.open(tmp_path / "old.tar", "w") as archive:
        archive.add(__file__, arcname="pickle")
    refusal(tmp_path / "old.tar", "tar", "legacy")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_zip(tmp_path, keep):
    path = tw.write_torch_zip(tmp_path / "t.pt", {"w": np.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    refusal(path, "truncated or damaged zip")


def test_zip_without_data_pkl(tmp_path):
    path = tw.write_zip(tmp_path / "z.pt", {"archive/version": b"3\n"})
    refusal(path, "archive/data.pkl", "not a torch.save checkpoint")


def test_empty_zip(tmp_path):
    path = tw.write_zip(tmp_path / "z.pt", {})
    refusal(path, "data.pkl")


def test_entry_outside_a_top_folder(tmp_path):
    path = tw.write_zip(tmp_path / "z.pt", {"data.pkl": pickle.dumps({}, protocol=2)})
    refusal(path, "'data.pkl'", "not inside a top folder")


def test_several_top_folders(tmp_path):
    entries = tw.torch_zip_entries({"w": np.zeros(2)})
    entries["other/data.pkl"] = entries["archive/data.pkl"]
    refusal(tw.write_zip(tmp_path / "z.pt", entries), "several top folders", "'archive'",
            "'other'")


def test_duplicate_entry_names(tmp_path):
    entries = tw.torch_zip_entries({"w": np.zeros(2)})
    path = tw.write_zip(tmp_path / "z.pt", entries)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")
        archive.writestr("archive/data/0", b"\x00" * 16)
    refusal(path, "same entry name twice")


def test_torchscript_archive(tmp_path):
    path = tw.write_zip(tmp_path / "ts.pt", entries_with(
        {}, replace={"archive/constants.pkl": pickle.dumps((), protocol=2)}))
    refusal(path, "TorchScript", "torch.jit.load")


def test_missing_storage_entry(tmp_path):
    path = tw.write_zip(tmp_path / "m.pt", entries_with({"w": np.zeros(2)},
                                                        drop={"archive/data/0"}))
    refusal(path, "storage entry archive/data/0 is missing")


def test_storage_entry_shorter_than_declared(tmp_path):
    entries = tw.torch_zip_entries({"w": np.arange(4, dtype=np.float32)})
    entries["archive/data/0"] = entries["archive/data/0"][:10]
    refusal(tw.write_zip(tmp_path / "s.pt", entries), "archive/data/0", "holds 10 bytes",
            "fewer than the 16")


@pytest.mark.parametrize("offset, size, stride", [
    (0, (5,), (1,)),       # longer than the storage
    (4, (1,), (1,)),       # starts at the end
    (0, (2, 2), (3, 1)),   # a stride that steps past the end
    (10, (0,), (1,)),      # even an empty tensor may not start past the end
])
def test_tensor_needing_more_than_its_storage(tmp_path, offset, size, stride):
    path = tw.write_torch_zip(tmp_path / "s.pt", Tensor(np.arange(4.), offset, size, stride))
    refusal(path, "needs", "which has only 32")


@pytest.mark.parametrize("offset, size, stride, words", [
    (-1, (1,), (1,), ["offset"]),
    (0, (2,), (-1,), ["stride"]),
    (0, (-2,), (1,), ["size"]),
    (0, (2, 2), (1,), ["does not fit"]),
    (0.5, (1,), (1,), ["offset"]),
])
def test_impossible_tensor_geometry(tmp_path, offset, size, stride, words):
    path = tw.write_torch_zip(tmp_path / "g.pt", Tensor(np.arange(4.), offset, size, stride))
    refusal(path, *words)


def test_expansion_bomb_is_refused_before_allocating(tmp_path):
    bomb = Tensor(np.zeros(1, np.float32), 0, (10**6, 10**6), (0, 0))
    refusal(tw.write_torch_zip(tmp_path / "bomb.pt", bomb), "expand")


def test_absurd_empty_tensor(tmp_path):
    refusal(tw.write_torch_zip(tmp_path / "e.pt", Tensor(np.zeros(1), 0, (0, 2**62), (1, 1))),
            "too big")


def storage_pid(storage_type=Global("torch", "FloatStorage"), key="0", numel=4):
    return PersistentId(("storage", storage_type, key, "cpu", numel))


def v2_call(pid, *rest):
    return Call(REBUILD_V2, (pid, 0, (4,), (1,), False, ORDERED_DICT) + rest)


def write_raw(tmp_path, obj, storage=b"\x00" * 16):
    data, _ = tw.dump_pickle(obj)
    return tw.write_zip(tmp_path / "raw.pt", entries_with(
        {}, replace={"archive/data.pkl": data, "archive/data/0": storage}))


@pytest.mark.parametrize("obj, words", [
    (v2_call(storage_pid(Global("torch", "QInt8Storage"))),
     ["unknown storage type torch.QInt8Storage"]),
    (v2_call(storage_pid(Global("torch", "NotAStorage"))), ["unknown storage type"]),
    (Call(Global("torch._utils", "_rebuild_tensor_v3"),
          (storage_pid(Global("torch.storage", "UntypedStorage"), numel=16), 0, (16,), (1,),
           False, ORDERED_DICT, Global("torch", "float8_e4m3fn"))),
     ["unsupported tensor dtype torch.float8_e4m3fn"]),
    (Call(Global("torch._utils", "_rebuild_tensor_v3"),
          (storage_pid(), 0, (4,), (1,), False, ORDERED_DICT, Global("torch", "uint16"))),
     ["needs an UntypedStorage"]),
    (v2_call(PersistentId("0")), ["persistent id"]),
    (v2_call(PersistentId(("module", Global("torch", "FloatStorage"), "0", "cpu", 4))),
     ["persistent id"]),
    (v2_call(storage_pid(key="../../etc/passwd")), ["not a plain name"]),
    (v2_call(storage_pid(numel=-1)), ["declares -1 elements"]),
    (v2_call(PersistentId(("storage", "torch.FloatStorage", "0", "cpu", 4))),
     ["not a torch storage class"]),
    (Call(REBUILD_V2, ("not a storage", 0, (1,), (1,), False, ORDERED_DICT)),
     ["persistent id"]),
    (v2_call(storage_pid(), {"quantized": True}), ["metadata"]),
    (Call(REBUILD_V2, (storage_pid(), 0, (4,), (1,), False, ORDERED_DICT), state={"x": 1}),
     ["state of a tensor"]),
    (Call(Global("torch._utils", "_rebuild_qtensor"), ()), ["unsupported tensor kind"]),
    (Call(Global("torch._utils", "_rebuild_parameter"), ("data", True, ORDERED_DICT)),
     ["nn.Parameter"]),
    (Call(Global("_codecs", "encode"), ("text", "rot13")), ["latin1"]),
    (Call(Global("numpy", "dtype"), ("O", False, True)), ["plain numeric"]),
    (Call(Global("numpy.core.multiarray", "_reconstruct"),
          (Global("numpy", "matrix"), (0,), b"b")), ["numpy.ndarray"]),
    (Call(Global("collections", "OrderedDict"), ("not pairs",)), ["pairs"]),
    (Call(Global("builtins", "bytearray"), (10**12,)), ["bytearray"]),
])
def test_malformed_pickle_contents(tmp_path, obj, words):
    refusal(write_raw(tmp_path, obj), *words)


@pytest.mark.parametrize("data_pkl", [
    b"\x80\x02cpathlib\nPosixPath\n}b.",            # BUILD on a placeholder class
    b"\x80\x02cpathlib\nPosixPath\n(K\x01K\x02u.",   # SETITEMS on a placeholder class
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x85\x81.",  # NEWOBJ on a rebuild function
    b"\x80\x02ccollections\nOrderedDict\n)R)R.",     # calling what a call returned
    b"\x80\x02cpathlib\nPosixPath\n)R)R.",          # calling a placeholder instance
])
def test_pickle_opcodes_used_against_our_objects(tmp_path, data_pkl):
    refusal(with_pickle(tmp_path, data_pkl), "corrupt or truncated")


@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                          st.sampled_from(["set", "insert", "delete"])), min_size=1, max_size=4))
def test_damaged_pickles_give_only_torch_format_errors(edits):
    data = bytearray(DAMAGE_BASE)
    for where, byte, edit in edits:
        index = int(where * len(data))
        if edit == "set":
            data[index] = byte
        elif edit == "insert":
            data.insert(index, byte)
        elif len(data) > 1:
            del data[index]
    with tempfile.TemporaryDirectory() as folder:
        path = tw.write_zip(os.path.join(folder, "d.pt"), entries_with(
            DAMAGE_OBJECT, replace={"archive/data.pkl": bytes(data)}))
        try:
            load(path)
        except TorchFormatError as error:
            assert "\n" not in str(error)


DAMAGE_OBJECT = {"sd": collections.OrderedDict(w=np.arange(6.0).reshape(2, 3)),
                 "view": Tensor(np.arange(4, dtype=np.int16), 1, (2,), (2,)),
                 "cfg": NewObj(Global("omegaconf.dictconfig", "DictConfig"), (), {"a": [1]}),
                 "extra": [None, True, 2**70, 1.5, "s", b"b", (1, 2, 3, 4)]}
DAMAGE_BASE = tw.dump_pickle(DAMAGE_OBJECT)[0]


def test_storage_of_a_partial_element(tmp_path):
    obj = Call(Global("torch._utils", "_rebuild_tensor_v3"),
               (storage_pid(Global("torch.storage", "UntypedStorage"), numel=5), 0, (1,), (1,),
                False, ORDERED_DICT, Global("torch", "int32")))
    refusal(write_raw(tmp_path, obj), "not a whole number of int32 elements")


@pytest.mark.parametrize("data_pkl, words", [
    (b"\x80\x02" + bytes(range(7, 60)), ["corrupt or truncated"]),
    (pickle.dumps({"a": list(range(100))}, protocol=2)[:50], ["corrupt or truncated"]),
    (b"", ["not a pickle of protocol 2 to 5"]),
    (pickle.dumps({}, protocol=0), ["not a pickle of protocol 2 to 5"]),
    (pickle.dumps({}, protocol=1), ["not a pickle of protocol 2 to 5"]),
    (b"\x80\x06N.", ["protocol 6"]),
    (b"\x80\x02" + b"]" * 50000 + b"a" * 49999 + b".", ["nests too deeply"]),
    (b"\x80\x05\x97.", ["corrupt or truncated"]),  # an out-of-band buffer we were not given
    (b"\x80\x02Nr\xff\xff\xff\x7f.", ["memo slot 2147483647"]),  # would claim 16 GiB
])
def test_corrupt_or_truncated_pickle(tmp_path, data_pkl, words):
    refusal(with_pickle(tmp_path, data_pkl), *words)


def test_entry_declaring_more_than_the_file_holds(tmp_path):
    path = tw.write_torch_zip(tmp_path / "a.pt", {"w": np.zeros(4)})
    tw.set_declared_size(path, "archive/data/0", 2**31)
    refusal(path, "archive/data/0", "past the end")


def test_compressed_entry_declaring_an_absurd_size(tmp_path):
    entries = tw.torch_zip_entries({"w": np.zeros(4)})
    path = tw.write_zip(tmp_path / "c.pt", entries, compression=zipfile.ZIP_DEFLATED)
    tw.set_declared_size(path, "archive/data.pkl", 2**32 - 1, keep_compressed=True)
    refusal(path, "archive/data.pkl", "absurd")


@pytest.mark.parametrize("entry", ["archive/data.pkl", "archive/data/0"])
def test_compressed_entry_inflating_past_its_declared_size(tmp_path, entry):
    # 20 MB of zeros deflate to ~20 kB; declare that the entry holds only ~20 kB.
    entries = tw.torch_zip_entries({"w": np.zeros(4)})
    entries[entry] += bytes(20_000_000)  # after the pickle's STOP, or the storage's end
    path = tw.write_zip(tmp_path / "c.pt", entries, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        compressed = archive.getinfo(entry).compress_size
    tw.set_declared_size(path, entry, compressed, keep_compressed=True)
    if entry.endswith("data.pkl"):
        # Read whole, it inflates to the declared size, where its CRC does not match.
        refusal(path, entry, "damaged", "CRC")
    else:
        # A storage inflates only as far as its tensors need.
        np.testing.assert_array_equal(load(path)["w"], np.zeros(4))


def test_overlapping_entries(tmp_path):
    path = tw.write_torch_zip(tmp_path / "o.pt", [np.zeros(4), np.ones(4)])
    with zipfile.ZipFile(path) as archive:
        first = archive.getinfo("archive/data/0").header_offset
    tw.set_header_offset(path, "archive/data/1", first)
    refusal(path, "overlap")


def test_damaged_storage_fails_its_crc(tmp_path):
    path = tw.write_torch_zip(tmp_path / "d.pt", {"w": np.zeros(4)})
    tw.flip_stored_byte(path, "archive/data/0")
    refusal(path, "archive/data/0", "CRC")


def test_unknown_byteorder(tmp_path):
    path = tw.write_zip(tmp_path / "b.pt", entries_with(
        {"w": np.zeros(2)}, replace={"archive/byteorder": b"middle"}))
    refusal(path, "unknown byteorder")


def test_unsupported_compression_method(tmp_path):
    path = tw.write_zip(tmp_path / "bz.pt", tw.torch_zip_entries({"w": np.zeros(2)}),
                        compression=zipfile.ZIP_BZIP2)
    refusal(path, "compression method 12")


def test_cycles_through_lists_keep_their_shape(tmp_path):
    # A list holding a tuple holding the list: the list comes first, so it is rebuilt.
    loaded = load(with_pickle(tmp_path, b"\x80\x02]q\x00h\x00\x85q\x01a."))
    assert loaded[0][0] is loaded


def test_tuple_reached_again_through_its_own_contents(tmp_path):
    # The same cycle entered at the tuple: it cannot be rebuilt before its own contents.
    refusal(with_pickle(tmp_path, b"\x80\x02]q\x00h\x00\x85q\x01a0h\x01."),
            "contains itself")


# -- malicious pickles: refused, and the payload never runs -------------------------------

def payloads(marker, script):
    touch = f"open({str(marker)!r}, 'w').write('ran')"
    return [
        ("os", "system", f"touch {marker}"),
        ("posix", "system", f"touch {marker}"),
        ("nt", "system", f"touch {marker}"),
        ("os", "popen", f"touch {marker}"),
        ("os", "execv", "/usr/bin/touch", ["touch", str(marker)]),
        ("subprocess", "check_call", ["touch", str(marker)]),
        ("subprocess", "Popen", ["touch", str(marker)]),
        ("builtins", "eval", touch),
        ("builtins", "exec", touch),
        ("__builtin__", "eval", touch),
        ("builtins", "open", str(marker), "w"),
        ("builtins", "getattr", "text", "upper"),
        ("builtins", "__import__", "os"),
        ("builtins", "compile", touch, "x", "exec"),
        ("io", "open", str(marker), "w"),
        ("_io", "FileIO", str(marker), "w"),
        ("shutil", "copyfile", os.devnull, str(marker)),
        ("sys", "exit", 3),
        ("importlib", "import_module", "antigravity"),
        ("runpy", "run_path", str(script)),
        ("pickle", "loads", tw.pickle_calling("os", "system", f"touch {marker}")),
        ("_pickle", "loads", tw.pickle_calling("os", "system", f"touch {marker}")),
        ("marshal", "loads", b"N"),
        ("socket", "socket"),
        ("ctypes", "CDLL", "libc.so.6"),
        ("code", "InteractiveInterpreter"),
        ("pty", "spawn", ["touch", str(marker)]),
        ("operator", "attrgetter", "system"),
        ("operator", "methodcaller", "system", f"touch {marker}"),
        ("functools", "partial", "x"),
        ("types", "FunctionType"),
        ("signal", "alarm", 0),
        ("multiprocessing", "Process"),
        ("threading", "Thread"),
        ("webbrowser", "get"),
        ("pdb", "Pdb"),
        ("copyreg", "_reconstructor"),
        # builtins beside the inert types a checkpoint may name (dict, list, int, ...)
        ("builtins", "setattr", "x", "y", "z"),
        ("builtins", "type", "X", (), {}),
        ("builtins", "globals"),
        ("builtins", "vars"),
        ("builtins", "breakpoint"),
        ("builtins", "input"),
        ("builtins", "print", "x"),
        ("__builtin__", "getattr", "text", "upper"),
        ("__builtin__", "file", str(marker), "w"),
        ("__builtin__", "execfile", str(script)),
        ("posix", "popen", f"touch {marker}"),
        ("os", "remove", str(script)),
        ("subprocess", "run", ["touch", str(marker)]),
    ]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "a payload ran"


@pytest.fixture
def script(tmp_path, marker):
    path = tmp_path / "payload.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return path


def test_malicious_globals_are_refused(tmp_path, marker, script):
    for module, name, *args in payloads(marker, script):
        for protocol in (2, 4):
            path = with_pickle(tmp_path, tw.pickle_calling(module, name, *args,
                                                           protocol=protocol))
            refusal(path, f"refusing global {module}.{name}")
            assert not marker.exists(), f"{module}.{name} ran"


def test_payload_hidden_inside_a_tensor_or_placeholder_is_refused(tmp_path, marker):
    system = Call(Global("os", "system"), (f"touch {marker}",))
    hidden = [
        Call(REBUILD_V2, (storage_pid(), 0, (4,), (1,), False, system)),
        NewObj(Global("omegaconf.dictconfig", "DictConfig"), (), {"_content": system}),
        {"state_dict": collections.OrderedDict(w=np.zeros(2)), "extra": [1, (2, system)]},
        Global("os", "system"),  # merely named, never called
    ]
    for obj in hidden:
        refusal(write_raw(tmp_path, obj), "refusing global os.system")


def test_a_method_reached_through_an_inert_global_is_refused(tmp_path, marker):
    """Names a checkpoint may hold (a pathlib path, a builtin type, a defaultdict) are
    inert; reaching a method of one needs getattr, which is refused by name."""
    path_object = Call(Global("pathlib", "PosixPath"), (str(marker),))
    write_text = Call(Global("builtins", "getattr"), (path_object, "write_text"))
    for obj, refused in [
        (Call(write_text, ("ran",)), "builtins.getattr"),
        (Call(Call(Global("__builtin__", "getattr"), (Global("__builtin__", "dict"), "fromkeys")),
              ([1],)), "__builtin__.getattr"),
        (Call(Global("collections", "defaultdict"), (Global("os", "system"),)), "os.system"),
        (Call(Global("collections", "defaultdict"), (Global("posix", "system"),)),
         "posix.system"),
    ]:
        refusal(write_raw(tmp_path, obj), f"refusing global {refused}")
    assert not marker.exists()


def test_inert_builtin_types_and_typing_names_are_placeholders(tmp_path):
    """omegaconf's metadata names ``dict``, ``int`` and ``typing.Any`` as values."""
    for protocol in (2, 4):
        loaded = load(with_pickle(tmp_path, pickle.dumps(
            {"object_type": dict, "key_type": int, "element_type": list,
             "any": __import__("typing").Any}, protocol=protocol)))
        module = "__builtin__" if protocol == 2 else "builtins"
        assert is_placeholder(loaded["object_type"], f"{module}.dict")
        assert is_placeholder(loaded["key_type"], f"{module}.long" if protocol == 2
                              else "builtins.int")
        assert is_placeholder(loaded["element_type"], f"{module}.list")
        assert is_placeholder(loaded["any"], "typing.Any")
    # Called, a type builds a Placeholder recording its arguments, not a real dict.
    made = round_trip(tmp_path, Call(Global("builtins", "dict"), ([("a", 1)],)))
    assert is_placeholder(made, "builtins.dict") and made.args == ([("a", 1)],)


@pytest.mark.parametrize("protocol", [2, 4])
def test_defaultdict_becomes_a_plain_dict(tmp_path, protocol):
    value = {"counts": collections.defaultdict(list, {"a": [1], "b": []}),
             "none": collections.defaultdict(None, {1: 2.5})}
    loaded = load(with_pickle(tmp_path, pickle.dumps(value, protocol=protocol)))
    assert loaded == {"counts": {"a": [1], "b": []}, "none": {1: 2.5}}
    assert type(loaded["counts"]) is dict and type(loaded["none"]) is dict


def test_a_defaultdict_factory_must_be_a_named_type(tmp_path):
    refusal(write_raw(tmp_path, Call(Global("collections", "defaultdict"), ("x",))),
            "defaultdict factory must be a named type")


def test_payload_in_an_inst_opcode_is_refused(tmp_path, marker):
    command = f"touch {marker}".encode()
    data = (b"\x80\x02(X" + len(command).to_bytes(4, "little") + command
            + b"ios\nsystem\n.")
    refusal(with_pickle(tmp_path, data), "refusing global os.system")


def test_refused_file_does_not_spoil_the_next_load(tmp_path, marker):
    refusal(with_pickle(tmp_path, tw.pickle_calling("os", "system", f"touch {marker}")))
    assert_same(round_trip(tmp_path, {"w": np.ones(2)}), {"w": np.ones(2)})


# -- against torch itself (skipped where torch is not installed) --------------------------

def torch_load(path):
    torch = pytest.importorskip("torch")
    return to_numpy(torch.load(path, weights_only=True), torch)


def to_numpy(value, torch):
    if isinstance(value, torch.Tensor):
        value = value.detach().resolve_conj().resolve_neg()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, dict):
        return {key: to_numpy(item, torch) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(item, torch) for item in value)
    return value


def test_torch_module_state_dicts(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 10), torch.nn.BatchNorm1d(10))
    model(torch.randn(2, 3, 5, 5))  # moves the BatchNorm running statistics
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    assert_same(load(path), torch_load(path))


def test_torch_tensors_of_every_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4, generator=generator) * 100
    tensors = {str(dtype): values.to(dtype) for dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8,
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
        torch.uint64, torch.complex64, torch.complex128)}
    tensors.update(zero_d=torch.tensor(2.5), empty=torch.zeros(0, 3, dtype=torch.int64),
                   parameter=torch.nn.Parameter(values[0].clone()))
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"dtypes{protocol}.pt"
        torch.save(tensors, path, pickle_protocol=protocol)
        expected = to_numpy(torch.load(path, weights_only=False), torch)
        assert_same(load(path), expected)


def test_torch_views_and_non_contiguous_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    views = {"base": base, "transposed": base.transpose(0, 2), "sliced": base[1:, ::2, 1::3],
             "row": base[2, 1], "scalar": base[1, 2, 3], "expanded": base[0, :1].expand(6, 5),
             "narrowed": base.view(-1).narrow(0, 7, 11), "neg": torch._neg_view(base[0]),
             "conj": (base[0] * (1 + 2j)).conj()}
    path = tmp_path / "views.pt"
    torch.save(views, path)
    with zipfile.ZipFile(path) as archive:  # one storage for the views of base
        assert len([name for name in archive.namelist() if "/data/" in name]) == 2
    assert_same(load(path), torch_load(path))


def test_torch_training_state(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    state = {"epoch": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "best": 0.5, "name": "srigl"}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(state, path)
    assert_same(load(path), torch_load(path))
    assert load(path)["scaler"]["scale"] == 2.0**10


def test_torch_extra_types_become_plain_values(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "extra.pt"
    torch.save({"size": torch.Size([2, 3]), "device": torch.device("cuda", 1),
                "cpu": torch.device("cpu"), "dtype": torch.float16, "bytes": b"\x00\xff",
                "numpy": np.float32(1.5)}, path)
    loaded = load(path)
    assert loaded["size"] == (2, 3) and type(loaded["size"]) is tuple
    assert (loaded["device"], loaded["cpu"]) == ("cuda:1", "cpu")
    assert is_placeholder(loaded["dtype"], "torch.float16")
    assert loaded["bytes"] == b"\x00\xff" and loaded["numpy"] == np.float32(1.5)


def test_torch_whole_module_becomes_an_inert_placeholder(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 3)
    path = tmp_path / "module.pt"
    torch.save(model, path)
    loaded = load(path)
    assert is_placeholder(loaded, "torch.nn.modules.linear.Linear")
    np.testing.assert_array_equal(loaded.state["_parameters"]["weight"],
                                  model.weight.detach().numpy())


def test_torch_file_options(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.serialization import config
    tensors = {"w": torch.arange(5.0)}
    torch.save(tensors, tmp_path / "no_byteorder.pt", _disable_byteorder_record=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config.save, "compute_crc32", False)
        torch.save(tensors, tmp_path / "no_crc.pt")
    for name in ("no_byteorder.pt", "no_crc.pt"):
        assert_same(load(tmp_path / name), torch_load(tmp_path / name))


def test_torch_legacy_file_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    refusal(path, "legacy", "torch.save(torch.load(f), g)")


def test_torch_reads_what_torch_files_writes(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    storage = np.arange(20, dtype=np.float32)
    obj = {"arrays": {dtype: random_array(dtype, (2, 3), rng) for dtype in DTYPES},
           "view": Tensor(storage, 3, (2, 3), (1, 4)), "again": Tensor(storage, 0, (4,), (5,)),
           "param": Parameter(np.ones(2, np.float16)), "zero_d": np.array(1, np.int8),
           "transposed": np.arange(6.).reshape(2, 3).T, "nested": [1, 2.5, "x", None, (True,)]}
    path = tw.write_torch_zip(tmp_path / "little.pt", obj)
    assert_same(load(path), torch_load(path))
    # torch 2.13 does not byte-swap UntypedStorage (v3) dtypes, so big-endian files are
    # compared on the typed-storage dtypes only.
    obj["arrays"] = {key: value for key, value in obj["arrays"].items()
                     if key not in ("uint16", "uint32", "uint64")}
    path = tw.write_torch_zip(tmp_path / "big.pt", obj, byteorder="big")
    assert_same(load(path), torch_load(path))
    path = tw.write_torch_zip(tmp_path / "params.pt", {"w": np.ones(2)}, parameters=True)
    assert isinstance(torch.load(path, weights_only=True)["w"], torch.nn.Parameter)


def test_loading_needs_no_torch(tmp_path):
    import subprocess
    path = tw.write_torch_zip(tmp_path / "w.pt", {"w": np.arange(3.0)})
    code = ("import sys; sys.modules['torch'] = None\n"
            "from srigl_np.formats.torch_format import load\n"
            f"assert load({str(path)!r})['w'].tolist() == [0.0, 1.0, 2.0]\n"
            "assert sys.modules['torch'] is None")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# -- hostile files within the deflate ratio: bounded by what the file holds ------------------

def load_peak(path):
    """(the TorchFormatError load(path) raises, or None; peak bytes allocated)."""
    from npz_files import peak_bytes
    return peak_bytes(lambda: load(path), TorchFormatError)


@pytest.mark.parametrize("size, stride", [((4096, 2048), (2048, 1)), ((2, 2), (2, 1))])
def test_a_compressed_storage_inflates_no_further_than_the_file_holds(tmp_path, size, stride):
    """A 32 MiB storage of zeros deflated to ~32 kB: a tensor over all of it, or a 2x2
    tensor that would make the reader inflate all of it, is refused before inflating.
    (A 1 MB file of this kind drove condense to 6.7 GB.)"""
    entries = tw.torch_zip_entries({"w": Tensor(Storage(np.zeros(8 << 20, np.float32)), 0,
                                                size, stride)})
    path = tw.write_zip(tmp_path / "deflated.pt", entries, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    error, peak = load_peak(path)
    assert "tensors would expand to more than 4x the" in str(error) and "\n" not in str(error)
    assert peak < 4 << 20


def test_many_tensors_over_one_storage_are_bounded_by_the_storage(tmp_path):
    """A 1 MiB storage and 100 tensors each viewing all of it: 100 MiB from a 1 MiB file."""
    storage = Storage(np.zeros(1 << 18, np.float32))
    state = {f"layer{i}.weight": Tensor(storage, 0, (512, 512), (512, 1)) for i in range(100)}
    error, peak = load_peak(tw.write_torch_zip(tmp_path / "views.pt", state))
    assert "tensors would expand to more than 4x the 1048576 storage bytes" in str(error)
    assert peak < 24 << 20


def test_one_tensor_referenced_many_times_counts_each_reference(tmp_path):
    """The pickle's memo lets one 1 MiB tensor fill a state_dict of 100 entries for 3 bytes
    each; every reader downstream copies it per entry. Two references (tied weights) read."""
    weight = np.zeros((512, 512), np.float32)
    error, peak = load_peak(tw.write_torch_zip(tmp_path / "alias.pt",
                                               {f"layer{i}.weight": weight for i in range(100)}))
    assert "tensors would expand to more than 4x the 1048576 storage bytes" in str(error)
    assert peak < 24 << 20
    tied = load(tw.write_torch_zip(tmp_path / "tied.pt", {"embed": weight, "head": weight}))
    assert tied["embed"] is tied["head"] and tied["head"].shape == (512, 512)


def test_data_pkl_is_bounded_before_it_is_inflated(tmp_path):
    path = tw.write_zip(tmp_path / "big.pt", entries_with(
        {}, replace={"archive/data.pkl": b"\x80\x02N." + bytes(17 << 20)}),
        compression=zipfile.ZIP_DEFLATED)
    error, peak = load_peak(path)
    assert "data.pkl declares 17825796 bytes, more than the 16777216" in str(error)
    assert peak < 1 << 20


@pytest.mark.parametrize("data_pkl, words", [
    # At the real bound, 300 kB of EMPTY_SET would build 65 MB of sets; here the bound is
    # 1 MiB (64 times less) and so are the pickles. EMPTY_DICT and DUP alike.
    (b"\x80\x04(" + b"\x8f" * 5_000 + b"l.", ["would build more than 1 MiB", "EMPTY_SET"]),
    (b"\x80\x02(" + b"}" * 10_000 + b"l.", ["would build more than 1 MiB", "EMPTY_DICT"]),
    (b"\x80\x02]" + b"2" * 17_000 + b"l.", ["would build more than 1 MiB", "DUP"]),
    (b"\x80\x02X" + (300_000).to_bytes(4, "little") + b"a" * 300_000 + b".",
     ["would build more than 1 MiB", "BINUNICODE"]),
    # a new placeholder class (~1 kB) per distinct global
    (b"\x80\x02(" + b"".join(b"cm\nf%d\n" % i for i in range(5000)) + b"l.",
     ["names more than 4096 distinct classes or functions"]),
])
def test_what_the_pickle_would_build_is_bounded_before_it_runs(tmp_path, monkeypatch,
                                                               data_pkl, words):
    from srigl_np.formats import torch_pickle
    if b"cm\n" not in data_pkl:
        monkeypatch.setattr(torch_pickle, "MAX_PICKLE_COST", 1 << 20)
    error, peak = load_peak(with_pickle(tmp_path, data_pkl))
    assert error is not None and all(word in str(error) for word in words), error
    assert peak < 16 << 20   # 4096 placeholder classes take ~10 MB


def test_the_bound_on_what_a_pickle_builds_lets_a_large_state_dict_through(tmp_path):
    """5,000 tensors (a ResNet-50 state_dict has ~320) are well inside it."""
    state = {f"layer{i}.weight": np.full(2, i, np.float32) for i in range(5000)}
    loaded = load(tw.write_torch_zip(tmp_path / "many.pt", state))
    assert len(loaded) == 5000 and loaded["layer4999.weight"].tolist() == [4999, 4999]


def test_the_entries_may_declare_at_most_max_bytes_in_all(tmp_path, monkeypatch):
    path = tw.write_torch_zip(tmp_path / "w.pt", {"w": np.zeros(100, np.float32)})
    monkeypatch.setenv("SRIGL_NP_MAX_BYTES", "300")
    refusal(path, "its entries declare", "more than the 300 bytes srigl_np reads from one "
            "file", "SRIGL_NP_MAX_BYTES")
    monkeypatch.setenv("SRIGL_NP_MAX_BYTES", "1M")
    assert load(path)["w"].shape == (100,)


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch):
    from srigl_np.formats import torch_format

    class OutOfMemory:
        def __init__(self, *args):
            pass

        def __call__(self, graph):
            raise MemoryError
    monkeypatch.setattr(torch_format, "_Finalizer", OutOfMemory)
    refusal(tw.write_torch_zip(tmp_path / "w.pt", {"w": np.zeros(3)}),
            "needs more memory than there is to read")
