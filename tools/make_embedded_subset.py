"""Regenerate ``srigl_np/_data/fashion_mnist_subset.npz``, the data shipped with srigl_np.

The subset is stratified: for each of the 10 classes, 500 images of Fashion-MNIST's training
set and 100 of its test set (5,000 + 1,000), drawn without replacement by
``numpy.random.default_rng(seed)`` (training picks first, class by class, then test picks)
and kept in their original order. Keys: ``x_train``/``x_test`` uint8[N, 28, 28],
``y_train``/``y_test`` uint8[N], ``train_index``/``test_index`` int32[N] (positions in the
full splits, for provenance) and ``seed``.

The same full dataset and seed always give the same arrays; the zip entries carry a fixed
timestamp, so with the same zlib the file is byte-identical too. To regenerate (needs the full
Fashion-MNIST, found as ``srigl_np.data.load_dataset("fashion-mnist")`` finds it, e.g. after
``apt-get install dataset-fashion-mnist``)::

    python tools/make_embedded_subset.py            # writes srigl_np/_data/fashion_mnist_subset.npz
    python tools/make_embedded_subset.py --data-path DIR --out /tmp/subset.npz

Keep ``srigl_np/_data/LICENSE-fashion-mnist`` beside it: Fashion-MNIST is MIT-licensed.
"""

import argparse
import hashlib
import os
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from srigl_np import data  # noqa: E402  (after the path set-up so the tool runs from a checkout)

SEED = 2017
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
DEFAULT_OUT = os.path.join(ROOT, "srigl_np", "_data", data.EMBEDDED_FILE)


def stratified_indices(labels, per_class, rng):
    """Sorted positions of ``per_class`` examples of each class, drawn without replacement."""
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
             for c in range(data.N_CLASSES)]
    return np.sort(np.concatenate(picks))


def make_subset(full, seed=SEED, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS):
    """The arrays to save, picked from ``full`` (a srigl_np.data.Dataset)."""
    rng = np.random.default_rng(seed)
    train_index = stratified_indices(full.y_train, train_per_class, rng)
    test_index = stratified_indices(full.y_test, test_per_class, rng)
    return {"x_train": full.x_train[train_index],
            "y_train": full.y_train[train_index].astype(np.uint8),
            "x_test": full.x_test[test_index],
            "y_test": full.y_test[test_index].astype(np.uint8),
            "train_index": train_index.astype(np.int32), "test_index": test_index.astype(np.int32),
            "seed": np.int64(seed)}


def write_npz(path, arrays):
    """A compressed .npz with fixed entry timestamps, written atomically (temp file + replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED,
                                                        compresslevel=9) as archive:
            for key, value in arrays.items():
                entry = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                entry.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(entry, "w") as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", default=None, help="directory with the full Fashion-MNIST")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    full = data.load_dataset("fashion-mnist", path=args.data_path)
    write_npz(args.out, make_subset(full, seed=args.seed))
    with open(args.out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes, sha256 {digest}) "
          f"from {full.source}, seed {args.seed}")


if __name__ == "__main__":
    main()
