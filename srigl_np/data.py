"""Data: IDX files, Fashion-MNIST/MNIST discovery, the embedded subset, batching, normalisation.

Where the full datasets are looked for, in this order (the first place holding all four IDX
files wins; each file may be raw or gzip-compressed, ``name`` or ``name.gz``):

1. ``path`` given by the caller (``--data-path``): ``path/<dataset>``, then ``path`` itself;
2. ``$SRIGL_NP_DATA``: ``$SRIGL_NP_DATA/<dataset>``, then ``$SRIGL_NP_DATA`` itself;
3. ``~/.cache/srigl_np/<dataset>``;
4. the system copy from Debian's ``dataset-fashion-mnist`` package,
   ``/usr/share/datasets/fashion-mnist`` (Fashion-MNIST only: no package ships MNIST).

A place you name (``path``, else ``$SRIGL_NP_DATA``) is the only one searched: when it is
missing, empty or lacks a file, that is an error naming what is missing, never a silent
switch to the cache, the system copy or the embedded subset.

``<dataset>`` is ``fashion-mnist`` or ``mnist``. MNIST and Fashion-MNIST use the same file
names and format, so the directory is what tells them apart: files lying directly in a
directory you name (``path`` or ``$SRIGL_NP_DATA``) are taken to be the dataset you asked for
(``"auto"`` asks for Fashion-MNIST), while the shared cache keeps each in its own subdirectory.

``load_dataset("auto")`` with no place named returns the full Fashion-MNIST when found, else
(saying so in ``Dataset.source``) the subset embedded
in the package (``srigl_np/_data``; 500 training and 100 test images per class, picked by
``tools/make_embedded_subset.py``), so training runs on a fresh install with no download.
"""

import gzip
import math
import operator
import os
import zlib
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

DATASET_NAMES = ("auto", "fashion-mnist", "mnist", "embedded")
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Searched after the user's places. Tests replace this mapping.
SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ()}
ENV_VAR = "SRIGL_NP_DATA"
CACHE_DIR = os.path.join("~", ".cache", "srigl_np")
EMBEDDED_FILE = "fashion_mnist_subset.npz"
N_CLASSES = 10
IMAGE_SHAPE = (28, 28)

_HOW_TO_GET = {
    "fashion-mnist": (
        "Install Debian's package (`sudo apt-get install dataset-fashion-mnist`), or download "
        "the four IDX files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) "
        f"into {CACHE_DIR}/fashion-mnist. Without them, use the embedded subset "
        "(load_dataset('embedded'), --dataset embedded)."),
    "mnist": (
        "Download the four IDX files from http://yann.lecun.com/exdb/mnist/ (mirror: "
        f"https://ossci-datasets.s3.amazonaws.com/mnist/) into {CACHE_DIR}/mnist."),
}

# IDX type codes (third magic byte) -> big-endian dtype, as in LeCun's format description.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _declared_size(head):
    """Bytes an IDX file with header bytes ``head`` should hold, or None when ``head`` is
    too short or malformed to say (read_idx then reports the problem)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        return None
    header = 4 + 4 * head[3]
    if len(head) < header:
        return None
    shape = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(head[3])]
    return header + math.prod(shape) * _IDX_DTYPES[head[2]].itemsize


def _read_gzip_bounded(path, f):
    """The decompressed bytes of the gzip file ``f``, reading at most what its IDX header
    declares plus one byte: a stream that inflates past that is refused unread."""
    try:
        with gzip.GzipFile(fileobj=f) as g:
            head = g.read(4)
            if len(head) == 4 and head[:2] == b"\0\0":
                head += g.read(4 * head[3])
            declared = _declared_size(head)
            if declared is None:
                return head + g.read(1024)   # malformed header: enough to report it
            chunks, left = [head], declared - len(head) + 1
            while left > 0:   # in chunks: a huge declared size allocates nothing up front
                chunk = g.read(min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            raw = b"".join(chunks)
            if len(raw) > declared:
                raise ValueError(f"{path}: trailing bytes after the data: header declares "
                                 f"{declared} bytes, the gzip stream inflates past that")
            return raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from None


def read_idx(path):
    """Read one IDX file (raw, or gzip-compressed: detected from its first bytes).

    Layout: magic ``00 00 <type code> <ndim>``, ``ndim`` big-endian uint32 sizes, then
    ``prod(sizes)`` big-endian items. Returns a new, writable, native-endian array of that
    shape. Raises ValueError naming the file for a bad magic, an unknown type code, a corrupt
    gzip stream, or data shorter or longer than the header declares.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        if compressed:
            raw = _read_gzip_bounded(path, f)
        else:
            raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic must start with 00 00, "
                         f"got {raw[:4].hex(' ') or 'an empty file'})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: expected {header} bytes for "
                         f"{ndim} dimensions, got {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "trailing bytes after the data"
        raise ValueError(f"{path}: {problem}: header declares shape {shape} of {dtype.name}, "
                         f"so the file should hold {expected} bytes, got {len(raw)}")
    items = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return items.astype(dtype.newbyteorder("="))  # a copy: writable, native byte order


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class Dataset:
    """Train and test splits: x[N, 28, 28] uint8 images, y[N] int64 labels in 0..9.

    ``name`` is the dataset loaded ("fashion-mnist", "mnist" or "embedded"); ``source`` is the
    directory the IDX files came from, or "embedded subset (srigl_np/_data/...)".
    """

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    name: str
    source: str


def search_places(name, path=None):
    """Directories searched for ``name`` ("fashion-mnist" or "mnist"), in order."""
    places = []
    for base in (path, os.environ.get(ENV_VAR) or None):
        if base is not None:
            base = os.path.abspath(os.path.expanduser(os.fspath(base)))
            places += [os.path.join(base, name), base]
    places.append(os.path.join(os.path.expanduser(CACHE_DIR), name))
    places += list(SYSTEM_DIRS.get(name, ()))
    return places


def _idx_files(directory):
    """stem -> path of the IDX files present in ``directory`` (raw preferred over .gz)."""
    found = {}
    for stem in IDX_STEMS:
        for candidate in (stem, stem + ".gz"):
            if os.path.isfile(os.path.join(directory, candidate)):
                found[stem] = os.path.join(directory, candidate)
                break
    return found


def _explicit_base(path):
    """(what, directory) for the place the user named: ``path``, else $SRIGL_NP_DATA, else
    (None, None). Only these are ever an error when they do not hold the dataset."""
    if path is not None:
        return "data path", os.path.abspath(os.path.expanduser(os.fspath(path)))
    env = os.environ.get(ENV_VAR) or None
    if env is not None:
        return f"${ENV_VAR}", os.path.abspath(os.path.expanduser(env))
    return None, None


def _place_line(place, searched=True):
    if not searched:
        return f"  {place} (not searched: a data path was named explicitly)"
    if not os.path.isdir(place):
        return f"  {place} (no such directory)"
    missing = [s for s in IDX_STEMS if s not in _idx_files(place)]
    return f"  {place} (missing {', '.join(missing)})"


def _not_found_message(name, path, places, searched=None):
    searched = places if searched is None else searched
    lines = [f"{name} not found: looked for {', '.join(s + '[.gz]' for s in IDX_STEMS)} in"]
    for place in places:
        lines.append(_place_line(place, place in searched))
    if path is None and not os.environ.get(ENV_VAR):
        lines.append(f"  (no data path given; ${ENV_VAR} not set)")
    lines.append(_HOW_TO_GET[name])
    return "\n".join(lines)


def _check_split(images, labels, image_file, label_file):
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{image_file}: expected uint8 images of shape (N, 28, 28), "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{label_file}: expected a 1-D uint8 label array, "
                         f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{image_file} holds {len(images)} images but {label_file} holds "
                         f"{len(labels)} labels")
    if labels.size and labels.max() >= N_CLASSES:
        raise ValueError(f"{label_file}: labels must be in 0..{N_CLASSES - 1}, "
                         f"found {int(labels.max())}")
    return images, labels.astype(np.int64)


def _load_idx_dataset(name, directory):
    files = _idx_files(directory)
    splits = []
    for image_stem, label_stem in (IDX_STEMS[:2], IDX_STEMS[2:]):
        image_file, label_file = files[image_stem], files[label_stem]
        splits += _check_split(read_idx(image_file), read_idx(label_file), image_file, label_file)
    return Dataset(*splits, name=name, source=directory)


def _load_embedded(why=None):
    resource = resources.files(__package__).joinpath("_data", EMBEDDED_FILE)
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as saved:
        splits = []
        for split in ("train", "test"):
            key_x, key_y = f"x_{split}", f"y_{split}"
            splits += _check_split(saved[key_x], saved[key_y], f"{EMBEDDED_FILE}[{key_x}]",
                                   f"{EMBEDDED_FILE}[{key_y}]")
    source = f"embedded subset (srigl_np/_data/{EMBEDDED_FILE})"
    return Dataset(*splits, name="embedded", source=source + (f": {why}" if why else ""))


def load_dataset(name="auto", path=None):
    """Load a dataset by name: "auto", "fashion-mnist", "mnist" or "embedded".

    "auto" is the full Fashion-MNIST when found (see the module docstring for where), else the
    embedded subset, and its ``source`` then says where the full set was looked for.
    ``path`` (a directory), else ``$SRIGL_NP_DATA``, is the only place searched when given
    (``path/<dataset>``, then ``path``): if it is missing, empty or lacks a file that is
    an error, never a fall back to the cache, the system copy or the embedded subset.
    ``path`` is ignored for "embedded". Raises FileNotFoundError, listing every place
    and the files missing there and how to get them, when a full dataset asked for by
    name (or in a named place) is not found; ValueError for an unknown name or bad files.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}, got {name!r}")
    if name == "embedded":
        return _load_embedded()
    what, base = _explicit_base(path)
    if base is not None and not os.path.isdir(base):
        shown = os.fspath(path) if path is not None else os.environ[ENV_VAR]
        raise FileNotFoundError(f"{what} {shown!r} is not a directory")
    full_name = "fashion-mnist" if name == "auto" else name
    places = search_places(full_name, path)
    # A place the user named is the only one searched: never silently replaced by the
    # cache, the system copy or the embedded subset when it is empty or incomplete.
    searched = places if base is None else [os.path.join(base, full_name), base]
    for place in searched:
        if len(_idx_files(place)) == len(IDX_STEMS):
            return _load_idx_dataset(full_name, place)
    if base is not None:
        raise FileNotFoundError(
            f"{what} {base} does not hold {full_name}: "
            + _not_found_message(full_name, path, places, searched))
    if name == "auto":
        return _load_embedded(
            f"full Fashion-MNIST not found in {', '.join(places)}; using the embedded subset")
    raise FileNotFoundError(_not_found_message(full_name, path, places))


def batches(n, batch_size, rng, shuffle=True):
    """Mini-batches of indices into ``n`` examples: each index exactly once per pass.

    Yields int64 arrays of length ``batch_size`` (the last one shorter when ``batch_size``
    does not divide ``n``). With ``shuffle`` the order is ``rng.permutation(n)`` (a
    numpy.random.Generator; same seed, same batches); without it, 0..n-1 and ``rng`` is unused.
    """
    n, batch_size = operator.index(n), operator.index(batch_size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    order = rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
    return (order[start:start + batch_size] for start in range(0, n, batch_size))


def _as_nchw(x, argument):
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise TypeError(f"{argument} must be a uint8 array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise ValueError(f"{argument} must have shape (N, H, W) or (N, C, H, W), got {x.shape}")


def channel_stats(x, chunk=4096):
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale.

    x: (N, H, W) -> (mean, std) as floats; (N, C, H, W) -> float64 arrays of shape (C,).
    Sums are exact integers accumulated over chunks of ``chunk`` images, so a full
    training set never needs a float64 copy.
    """
    x4 = _as_nchw(x, "x")
    if x4.shape[0] == 0 or x4[0].size == 0:
        raise ValueError(f"x must hold at least one pixel, got shape {x.shape}")
    total = np.zeros(x4.shape[1], dtype=np.int64)
    total_sq = np.zeros(x4.shape[1], dtype=np.int64)
    for start in range(0, len(x4), chunk):
        part = x4[start:start + chunk].astype(np.int64)
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
    count = x4.shape[0] * x4.shape[2] * x4.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)  # clamp rounding below zero
    mean, std = mean / 255.0, np.sqrt(var) / 255.0
    if x.ndim == 3:
        return float(mean[0]), float(std[0])
    return mean, std


def normalize(x, mean, std):
    """(x / 255 - mean) / std as float32[N, C, H, W], C-contiguous.

    x: uint8 (N, H, W) (one channel, C = 1) or (N, C, H, W); mean, std: scalars or shape (C,),
    on the [0, 1] scale of ``channel_stats``; std must be > 0.
    """
    x4 = _as_nchw(x, "x")
    channels = x4.shape[1]
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    for argument, value in (("mean", mean), ("std", std)):
        if value.ndim > 1 or value.size not in (1, channels) or not np.all(np.isfinite(value)):
            raise ValueError(f"{argument} must be a finite scalar or have shape ({channels},), "
                             f"got {value}")
    if not np.all(std > 0):
        raise ValueError(f"std must be > 0, got {std}")
    # One float32 allocation, then in place: x * (1 / (255 std)) - mean / std.
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(-1, 1, 1)
    shift = (mean / std).astype(np.float32).reshape(-1, 1, 1)
    out = np.ascontiguousarray(x4, dtype=np.float32)
    out *= scale
    out -= shift
    return out
