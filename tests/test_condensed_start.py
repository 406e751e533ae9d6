"""SRigL's condensed layers start condensed: the masked path's start, bit for bit, with no
array of the layer's dense size (dst.constant_fan_in_columns, nn.layers.kaiming_normal_at,
Linear(init=False), DynamicSparsity's layout-backed masks and packed ever-active record).
"""

import tracemalloc

import numpy as np
import pytest

from srigl_np import dst
from srigl_np.dst import masks
from srigl_np.dst.sparsity import DynamicSparsity, _PackedRows, train_step
from srigl_np.nn.layers import Linear, ReLU, Sequential, kaiming_normal, kaiming_normal_at
from srigl_np.nn.models import build
from srigl_np.nn.optim import SGD

# (3000, 2000) is 6M keys: two row blocks of about 4M.
SHAPES = [((50, 7), 0.7), ((3000, 2000), 0.9), ((8, 3, 3, 3), 0.5), ((1, 5), 0.0), ((6, 9), 0.99)]


@pytest.mark.parametrize("shape, sparsity", SHAPES)
@pytest.mark.parametrize("block_entries", [1, 40, None])
def test_the_columns_are_the_masks_in_any_number_of_blocks(monkeypatch, shape, sparsity,
                                                            block_entries):
    if block_entries is not None:
        monkeypatch.setattr(masks, "_BLOCK_ENTRIES", block_entries)
    mask = dst.constant_fan_in_mask(shape, sparsity, np.random.default_rng(3))
    columns = dst.constant_fan_in_columns(shape, sparsity, np.random.default_rng(3),
                                          index_dtype=np.int16)
    n = shape[0]
    _, expected = np.nonzero(mask.reshape(n, -1))
    assert columns.dtype == np.int16
    np.testing.assert_array_equal(columns, expected.reshape(n, -1))


@pytest.mark.parametrize("shape, sparsity", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_rows", [1, 7, 4000])
def test_kaiming_normal_at_gives_kaiming_normals_entries(shape, sparsity, dtype, block_rows):
    columns = dst.constant_fan_in_columns(shape, sparsity, np.random.default_rng(1))
    n, k = columns.shape
    fan_in = np.full(n, k)
    dense = kaiming_normal(shape, fan_in, np.random.default_rng(2), dtype).reshape(n, -1)
    values = kaiming_normal_at(shape, fan_in, np.random.default_rng(2), columns, dtype,
                               block_rows=block_rows)
    assert values.dtype == dtype
    np.testing.assert_array_equal(values, np.take_along_axis(dense, columns, axis=1))
    with pytest.raises(ValueError, match="columns"):
        kaiming_normal_at(shape, fan_in[:-1], np.random.default_rng(2), columns, dtype,
                          block_rows=block_rows)


@pytest.mark.parametrize("seed", range(6))
def test_packed_rows_set_count_and_unpack_as_a_bool_array(seed):
    rng = np.random.default_rng(seed)
    n, fan_in = int(rng.integers(1, 9)), int(rng.integers(1, 30))   # F not a multiple of 8
    dense = rng.random((n, fan_in)) < 0.3
    packed = _PackedRows.of_dense(dense)
    np.testing.assert_array_equal(packed.dense(), dense)
    rows = np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
    k = int(rng.integers(1, fan_in + 1))
    indices = np.sort(np.stack([rng.choice(fan_in, k, replace=False) for _ in rows]), axis=1)
    packed.set(rows, indices.astype(np.int16))
    dense[rows[:, None], indices] = True
    np.testing.assert_array_equal(packed.dense(), dense)
    assert packed.count() == dense.sum()
    layout = _PackedRows.of_layout(n, fan_in, rows, indices)
    assert layout.count() == rows.size * k


def _model(init):
    rng = np.random.default_rng(0)
    return Sequential(Linear(256, 48, rng=rng, init=init), ReLU(), Linear(48, 10, rng=rng))


def test_a_condensed_start_is_the_masked_start_and_holds_no_dense_mask():
    runs = {}
    for compute in ("masked", "condensed"):
        model = build("mlp", rng=np.random.default_rng(1), dtype=np.float64)
        optimizer = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
        runs[compute] = DynamicSparsity(model, optimizer, sparsity=0.9, delta=5, t_end=50,
                                        seed=4, compute=compute)
    masked, condensed = runs["masked"], runs["condensed"]
    assert condensed.condensed and not set(condensed.condensed) & set(condensed._masks)
    assert all(isinstance(condensed._ever[name], _PackedRows) for name in condensed.condensed)
    for name in masked.names:
        np.testing.assert_array_equal(condensed.masks[name], masked.masks[name])
        np.testing.assert_array_equal(condensed.ever_active[name], masked.ever_active[name])
    same = ("layer", "shape", "sparsity", "fan_in", "updates", "kept_dense")
    assert [{key: row[key] for key in same} for row in condensed.plan()] == \
        [{key: row[key] for key in same} for row in masked.plan()]
    assert condensed.summary() == masked.summary()
    with condensed.dense_view():
        for name, weight in masked.model.named_parameters().items():
            np.testing.assert_array_equal(condensed.model.named_parameters()[name], weight)
        assert not condensed.condensed and set(condensed._masks) == set(condensed.names)
    assert set(condensed.condensed).isdisjoint(condensed._masks)   # condensed again


def test_a_layout_backed_mask_is_not_written_behind_the_layouts_back(tmp_path):
    model = _model(init=False)
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), sparsity=0.9, delta=5,
                         t_end=50, distribution="uniform", dense_layers=(1,),
                         compute="condensed")
    assert list(ds.condensed) == ["0.weight"]
    with pytest.raises(RuntimeError, match="held condensed"):
        ds.masks["0.weight"] = np.ones((48, 256), dtype=bool)
    with pytest.raises(RuntimeError, match="held condensed"):
        ds.ever_active["0.weight"] = np.ones((48, 256), dtype=bool)
    state = ds.state_dict()
    with pytest.raises(RuntimeError, match="inside dense_view"):
        ds.load_state_dict(state)
    with ds.dense_view():
        ds.load_state_dict(state)
    with pytest.raises(TypeError):
        del ds.masks["0.weight"]


def test_a_layer_built_without_init_is_never_written_and_trains():
    """Linear(init=False)'s dense weight and gradient stay the untouched zeros they were
    built as: DynamicSparsity draws the layer condensed, and its steps and updates run on
    the condensed arrays; the run is the one a drawn Linear gives (DynamicSparsity
    replaces every sparse weight's values)."""
    runs = []
    for init in (False, True):
        model = _model(init)
        dense_weight, dense_grad = model.layers[0].params["weight"], model.layers[0].grads["weight"]
        optimizer = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
        ds = DynamicSparsity(model, optimizer, sparsity=0.9, delta=3, t_end=50,
                             distribution="uniform", dense_layers=(1,), compute="condensed")
        rng = np.random.default_rng(5)
        for step in range(7):
            x, y = rng.standard_normal((16, 256)), rng.integers(0, 10, 16)
            train_step(model, optimizer, ds, x, y, step)
        if not init:
            assert not dense_weight.any() and not dense_grad.any()
        assert [r["step"] for r in ds.audit_records] == [3, 6]
        runs.append((ds.audit_records, model.layers[0].params["weight"].copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_a_condensed_start_allocates_less_than_the_dense_weight():
    """A 4096 x 8192 layer (128 MiB in float32) at 99%: DynamicSparsity's start allocates
    a few row blocks and the condensed arrays; the masked start its mask, float64 draws
    and init (over 4x the dense weight)."""
    peaks = {}
    for compute in ("condensed", "masked"):
        model = Sequential(Linear(8192, 4096, init=False), ReLU(),
                           Linear(4096, 10, rng=np.random.default_rng(0)))
        optimizer = SGD(model.named_parameters(), lr=0.1)
        tracemalloc.start()
        DynamicSparsity(model, optimizer, sparsity=0.99, delta=5, t_end=50,
                        distribution="uniform", dense_layers=(1,), compute=compute)
        peaks[compute] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["condensed"] < 128 * 2**20 < 4 * 128 * 2**20 < peaks["masked"], peaks
