"""Tests for srigl_np.data: IDX reading, dataset discovery, the embedded subset, batching and
normalisation. IDX files are written by the tests; the Debian copy is used only where present."""

import gzip
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from srigl_np import data
from scripts import load_script

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
HAS_DEBIAN = all(os.path.exists(os.path.join(DEBIAN_DIR, s + ".gz")) for s in data.IDX_STEMS)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def idx_bytes(array, code=None):
    """The IDX encoding of ``array``, written from the format description (big-endian)."""
    codes = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D,
             "float64": 0x0E}
    code = codes[array.dtype.name] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, compress=False):
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    return path


def write_dataset(directory, n_train=12, n_test=7, seed=0, compress=True, label_offset=0):
    """Four IDX files of random images and labels in ``directory``; returns the arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split + "-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[split + "-labels-idx1-ubyte"] = (
            rng.integers(0, 10, n, dtype=np.uint8) + np.uint8(label_offset))
    for stem, array in arrays.items():
        write(os.path.join(directory, stem + (".gz" if compress else "")), idx_bytes(array),
              compress)
    return arrays


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No user data anywhere: HOME in tmp, $SRIGL_NP_DATA unset, no system directories."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "system"),),
                                              "mnist": ()})
    return tmp_path


# --- read_idx ---------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,shape", [
    (np.uint8, (5, 28, 28)), (np.uint8, (9,)), (np.int8, (3, 4)), (np.int16, (2, 3, 4)),
    (np.int32, (6,)), (np.float32, (2, 5)), (np.float64, (1, 2, 3, 2)), (np.uint8, (0, 28, 28))])
def test_read_idx_round_trip(tmp_path, compress, dtype, shape):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write(tmp_path / ("a.idx.gz" if compress else "a.idx"), idx_bytes(array), compress)
    result = data.read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    assert result.shape == shape and result.flags.writeable
    np.testing.assert_array_equal(result, array)


def test_read_idx_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write(tmp_path / "plain-name", idx_bytes(array), compress=True)
    np.testing.assert_array_equal(data.read_idx(path), array)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated_names_file_and_sizes(tmp_path, compress):
    payload = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = write(tmp_path / "short", payload[:-10], compress)
    with pytest.raises(ValueError, match=r"short.*truncated.*\(4, 28, 28\).*"
                       rf"{len(payload)} bytes, got {len(payload) - 10}"):
        data.read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    payload = idx_bytes(np.zeros(5, np.uint8))
    path = write(tmp_path / "long", payload + b"\x00\x01")
    with pytest.raises(ValueError, match=rf"long.*trailing.*{len(payload)} bytes, "
                                         rf"got {len(payload) + 2}"):
        data.read_idx(path)


@pytest.mark.parametrize("payload,message", [
    (b"", "not an IDX file.*empty"),
    (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "not an IDX file.*01 00 08 01"),
    (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big"), "truncated IDX header.*16 bytes.*got 8"),
])
def test_read_idx_bad_header(tmp_path, payload, message):
    path = write(tmp_path / "bad", payload)
    with pytest.raises(ValueError, match=message):
        data.read_idx(path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_read_idx_corrupt_gzip_is_value_error(tmp_path, damage):
    rng = np.random.default_rng(2)
    compressed = gzip.compress(idx_bytes(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)))
    if damage == "truncate":
        corrupt = compressed[:len(compressed) // 2]
    else:  # damage the deflate stream or its CRC: either must be reported the same way
        middle = len(compressed) // 2
        corrupt = compressed[:middle] + bytes([compressed[middle] ^ 0xFF]) + compressed[middle + 1:]
    path = write(tmp_path / "broken.gz", corrupt)
    with pytest.raises(ValueError, match=r"broken\.gz: corrupt gzip"):
        data.read_idx(path)


# --- discovery and load_dataset --------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_load_dataset_from_user_path(isolated, compress):
    arrays = write_dataset(isolated / "mine", compress=compress)
    ds = data.load_dataset("fashion-mnist", path=isolated / "mine")
    assert ds.name == "fashion-mnist" and ds.source == str(isolated / "mine")
    np.testing.assert_array_equal(ds.x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.y_train.dtype == np.int64 and ds.x_test.dtype == np.uint8


def test_search_order_user_path_env_cache_system(isolated, monkeypatch):
    user, env = isolated / "user", isolated / "env"
    cache = isolated / "home" / ".cache" / "srigl_np" / "fashion-mnist"
    system = isolated / "system"
    for i, directory in enumerate((user, env, cache, system)):
        write_dataset(directory, n_train=3 + i)  # the train size tells which place won
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert len(data.load_dataset("fashion-mnist", path=user).x_train) == 3
    assert len(data.load_dataset("fashion-mnist").x_train) == 4
    monkeypatch.delenv(data.ENV_VAR)
    assert len(data.load_dataset("fashion-mnist").x_train) == 5
    assert data.load_dataset("auto").source == str(cache)
    cache_files = os.listdir(cache)
    os.remove(cache / cache_files[0])  # an incomplete place is skipped
    ds = data.load_dataset("auto")
    assert (ds.name, ds.source, len(ds.x_train)) == ("fashion-mnist", str(system), 6)


def test_subdirectory_checked_before_directory_itself(isolated):
    write_dataset(isolated / "d", n_train=3)
    write_dataset(isolated / "d" / "fashion-mnist", n_train=4)
    write_dataset(isolated / "d" / "mnist", n_train=5)
    assert len(data.load_dataset("fashion-mnist", path=isolated / "d").x_train) == 4
    ds = data.load_dataset("mnist", path=isolated / "d")
    assert (ds.name, ds.source, len(ds.x_train)) == ("mnist", str(isolated / "d" / "mnist"), 5)


def test_mnist_never_taken_from_fashion_locations(isolated):
    write_dataset(isolated / "system")  # the Debian place holds Fashion-MNIST only
    write_dataset(isolated / "home" / ".cache" / "srigl_np")  # cache: by subdirectory only
    with pytest.raises(FileNotFoundError):
        data.load_dataset("mnist")
    write_dataset(isolated / "home" / ".cache" / "srigl_np" / "mnist", n_train=4)
    assert len(data.load_dataset("mnist").x_train) == 4


def test_not_found_lists_every_place_and_how_to_get(isolated, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "env"))
    (isolated / "user").mkdir()
    write(isolated / "user" / "train-images-idx3-ubyte", b"")
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("fashion-mnist", path=isolated / "user")
    message = str(info.value)
    places = data.search_places("fashion-mnist", isolated / "user")
    assert places == [str(isolated / "user" / "fashion-mnist"), str(isolated / "user"),
                      str(isolated / "env" / "fashion-mnist"), str(isolated / "env"),
                      str(isolated / "home" / ".cache" / "srigl_np" / "fashion-mnist"),
                      str(isolated / "system")]
    for place in places:
        assert f"  {place} (" in message
    assert "missing train-labels-idx1-ubyte, t10k-images" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message
    assert "~/.cache/srigl_np/fashion-mnist" in message


def test_not_found_mnist_says_how_to_get(isolated):
    with pytest.raises(FileNotFoundError, match=r"(?s)mnist not found.*srigl_np/mnist.*"
                                                r"not set.*yann\.lecun\.com"):
        data.load_dataset("mnist")


def test_auto_falls_back_to_embedded(isolated):
    ds = data.load_dataset("auto")
    assert ds.name == "embedded" and "embedded" in ds.source


def test_bad_name_and_bad_path(isolated):
    with pytest.raises(ValueError, match="auto, fashion-mnist, mnist, embedded.*'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.load_dataset("auto", path=isolated / "nowhere")


@pytest.mark.parametrize("change,message", [
    ({"t10k-labels-idx1-ubyte": np.zeros(6, np.uint8)}, "holds 7 images but .* holds 6 labels"),
    ({"train-labels-idx1-ubyte": np.full(12, 10, np.uint8)}, r"labels must be in 0\.\.9, found 10"),
    ({"train-images-idx3-ubyte": np.zeros((12, 28, 27), np.uint8)}, r"\(N, 28, 28\)"),
    ({"train-labels-idx1-ubyte": np.zeros(12, np.int32)}, "1-D uint8 label"),
])
def test_load_dataset_rejects_inconsistent_files(isolated, change, message):
    write_dataset(isolated / "d", compress=False)
    for stem, array in change.items():
        write(isolated / "d" / stem, idx_bytes(array))
    with pytest.raises(ValueError, match=message):
        data.load_dataset("fashion-mnist", path=isolated / "d")


def test_corrupt_file_is_an_error_not_a_fallback(isolated):
    write_dataset(isolated / "d")
    write(isolated / "d" / "t10k-images-idx3-ubyte.gz", b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: corrupt gzip"):
        data.load_dataset("auto", path=isolated / "d")


# --- the embedded subset ----------------------------------------------------------------

def test_embedded_subset_shapes_and_strata():
    ds = data.load_dataset("embedded")
    assert ds.name == "embedded" and ds.source.startswith("embedded subset (srigl_np/_data/")
    assert ds.x_train.shape == (5000, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert ds.x_train.dtype == ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 500))
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.full(10, 100))
    # Real images, not blanks: Fashion-MNIST's mean pixel is about 0.286.
    assert 0.25 < data.channel_stats(ds.x_train)[0] < 0.32


def test_embedded_files_ship_with_licence():
    from importlib import resources
    directory = resources.files("srigl_np").joinpath("_data")
    npz = directory.joinpath(data.EMBEDDED_FILE)
    assert npz.is_file() and os.path.getsize(str(npz)) < 5_000_000
    licence = directory.joinpath("LICENSE-fashion-mnist").read_text()
    assert "Copyright (c) 2017 Zalando SE" in licence and "MIT" in licence
    with npz.open("rb") as f, np.load(f) as saved:
        assert len(np.unique(saved["train_index"])) == 5000 and saved["train_index"].max() < 60000
        assert len(np.unique(saved["test_index"])) == 1000 and saved["test_index"].max() < 10000


@pytest.mark.skipif(not HAS_DEBIAN, reason=f"full Fashion-MNIST not at {DEBIAN_DIR}")
def test_embedded_subset_regenerates_from_full_dataset():
    tool = load_script("tools/make_embedded_subset.py")
    full = data.load_dataset("fashion-mnist", path=DEBIAN_DIR)
    assert full.x_train.shape == (60000, 28, 28) and full.x_test.shape == (10000, 28, 28)
    fresh = tool.make_subset(full)
    with np.load(os.path.join(ROOT, "srigl_np", "_data", data.EMBEDDED_FILE)) as shipped:
        assert sorted(shipped.files) == sorted(fresh)
        for key, value in fresh.items():
            np.testing.assert_array_equal(shipped[key], value, err_msg=key)
            assert shipped[key].dtype == np.asarray(value).dtype, key


# --- batches ----------------------------------------------------------------------------

@given(n=st.integers(0, 300), batch_size=st.integers(1, 64), seed=st.integers(0, 2**32 - 1),
       shuffle=st.booleans())
def test_batches_cover_every_index_once(n, batch_size, seed, shuffle):
    parts = list(data.batches(n, batch_size, np.random.default_rng(seed), shuffle=shuffle))
    assert [len(p) for p in parts] == [min(batch_size, n - s) for s in range(0, n, batch_size)]
    order = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(n))
    again = list(data.batches(n, batch_size, np.random.default_rng(seed), shuffle=shuffle))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_batches_shuffle_depends_on_seed():
    first = np.concatenate(list(data.batches(100, 10, np.random.default_rng(0))))
    second = np.concatenate(list(data.batches(100, 10, np.random.default_rng(1))))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(100))


@pytest.mark.parametrize("kwargs,error,message", [
    ({"n": 10, "batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
    ({"n": -1, "batch_size": 2}, ValueError, "n must be >= 0, got -1"),
    ({"n": 10, "batch_size": 2.5}, TypeError, "integer"),
    ({"n": 10, "batch_size": 2, "rng": 0}, TypeError, "rng must be a numpy.random.Generator"),
])
def test_batches_validates_eagerly(kwargs, error, message):
    kwargs = {"rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(error, match=message):
        data.batches(**kwargs)  # raised on the call, before iteration starts


# --- channel_stats and normalize --------------------------------------------------------

def test_channel_stats_matches_float64_reference():
    x = np.random.default_rng(3).integers(0, 256, (37, 28, 28), dtype=np.uint8)
    mean, std = data.channel_stats(x, chunk=5)  # several chunks, a partial last one
    assert isinstance(mean, float) and isinstance(std, float)
    reference = x.astype(np.float64) / 255
    assert mean == pytest.approx(reference.mean(), rel=1e-12)
    assert std == pytest.approx(reference.std(), rel=1e-12)


def test_channel_stats_per_channel():
    x = np.random.default_rng(4).integers(0, 256, (9, 3, 5, 6), dtype=np.uint8)
    x[:, 1] = 255  # a constant channel: std 0, not a negative rounding error
    mean, std = data.channel_stats(x, chunk=4)
    reference = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, reference.std(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    assert std[1] == 0.0


def test_normalize_standardises_and_is_float32_nchw():
    x = np.random.default_rng(5).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    mean, std = data.channel_stats(x)
    out = data.normalize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == (50, 1, 28, 28) and out.flags.c_contiguous
    assert abs(out.mean(dtype=np.float64)) < 1e-5
    assert out.std(dtype=np.float64) == pytest.approx(1.0, abs=1e-5)
    expected = (x.astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_normalize_per_channel_and_non_contiguous_input():
    x = np.random.default_rng(6).integers(0, 256, (4, 6, 5, 5), dtype=np.uint8)[:, ::2]
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
    out = data.normalize(x, mean, std)
    assert out.shape == (4, 3, 5, 5) and out.flags.c_contiguous
    expected = (x / 255 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x,mean,std,error,message", [
    (np.zeros((2, 28, 28), np.float32), 0.5, 0.2, TypeError, "x must be a uint8 array"),
    (np.zeros((2, 28), np.uint8), 0.5, 0.2, ValueError, r"x must have shape"),
    (np.zeros((2, 28, 28), np.uint8), 0.5, 0.0, ValueError, "std must be > 0"),
    (np.zeros((2, 28, 28), np.uint8), np.nan, 0.2, ValueError, "mean must be a finite"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0.1, 0.2], 0.2, ValueError, r"mean .*shape \(3,\)"),
])
def test_normalize_rejects_bad_arguments(x, mean, std, error, message):
    with pytest.raises(error, match=message):
        data.normalize(x, mean, std)


def test_channel_stats_rejects_empty():
    with pytest.raises(ValueError, match="at least one pixel"):
        data.channel_stats(np.zeros((0, 28, 28), np.uint8))


# --- issue 13: a named place is never silently replaced; gzip never inflated past its header

@pytest.mark.parametrize("dataset", ["auto", "fashion-mnist"])
@pytest.mark.parametrize("state", ["empty", "incomplete"])
def test_named_data_path_that_lacks_files_is_an_error_not_a_fallback(isolated, dataset, state):
    write_dataset(isolated / "system", n_train=5)   # the system copy would load
    named = isolated / "named"
    named.mkdir()
    if state == "incomplete":
        write_dataset(named)
        os.remove(named / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset(dataset, path=named)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"data path {named} does not hold fashion-mnist")
    assert f"  {named} (missing {'t10k-labels-idx1-ubyte' if state == 'incomplete' else 'train-images'}" \
        in str(info.value)
    assert f"  {isolated / 'system'} (not searched" in str(info.value)


@pytest.mark.parametrize("state", ["missing", "empty", "incomplete"])
def test_env_data_dir_that_lacks_files_is_an_error_not_a_fallback(isolated, monkeypatch, state):
    write_dataset(isolated / "home" / ".cache" / "srigl_np" / "fashion-mnist")  # would load
    env = isolated / "env"
    if state != "missing":
        env.mkdir()
    if state == "incomplete":
        write_dataset(env)
        os.remove(env / "train-images-idx3-ubyte.gz")
    monkeypatch.setenv(data.ENV_VAR, str(env))
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("auto")
    first = str(info.value).splitlines()[0]
    if state == "missing":
        assert first == f"${data.ENV_VAR} {str(env)!r} is not a directory"
    else:
        assert first.startswith(f"${data.ENV_VAR} {env} does not hold fashion-mnist")
        assert "missing train-images-idx3-ubyte" in str(info.value)


def test_auto_without_a_named_place_says_it_fell_back(isolated):
    ds = data.load_dataset("auto")
    assert ds.name == "embedded"
    assert "full Fashion-MNIST not found in" in ds.source and str(isolated / "system") in ds.source


def test_gzip_inflating_past_its_header_is_refused_after_a_bounded_read(tmp_path, monkeypatch):
    array = np.arange(10, dtype=np.uint8)
    path = write(tmp_path / "bomb.gz", idx_bytes(array) + bytes(64 << 20), compress=True)
    assert os.path.getsize(path) < 1 << 20
    read = []
    real_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read",
                        lambda self, n=-1: read.append(n) or real_read(self, n))
    with pytest.raises(ValueError, match=r"bomb\.gz: trailing bytes after the data: header "
                                         r"declares 18 bytes"):
        data.read_idx(path)
    assert all(0 <= n <= 1 << 20 for n in read) and sum(read) <= 18 + 1


def test_gzip_with_a_huge_declared_shape_reads_only_what_is_there(tmp_path):
    header = bytes([0, 0, 0x08, 1]) + (2**32 - 1).to_bytes(4, "big")
    path = write(tmp_path / "huge.gz", header + b"\0" * 10, compress=True)
    with pytest.raises(ValueError, match=r"huge\.gz: truncated"):
        data.read_idx(path)
