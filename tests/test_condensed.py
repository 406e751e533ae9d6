"""CondensedLinear/CondensedConv2d, condense(model) and the .npz format."""

import json
import os
import re

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given

from npz_files import npy_header
from srigl_np.inference.condensed import CondensedConv2d, CondensedLinear
from srigl_np.inference.condensed_model import CondensedModel, Scatter, load
from srigl_np.inference.condensing import condense
from srigl_np.nn.layers import Conv2d, Dropout, Flatten, Layer, Linear, ReLU, Sequential
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d
from strategies import fan_in_weight, sparse_models


# --- CondensedLinear -------------------------------------------------------------------------

def test_from_dense_keeps_active_rows_values_indices_bias():
    rng = np.random.default_rng(0)
    weight = fan_in_weight((6, 10), 3, rng, ablated=(1, 4))
    bias = np.arange(6, dtype=np.float32)
    layer = CondensedLinear.from_dense(weight, bias)
    assert layer.active.tolist() == [0, 2, 3, 5]
    assert layer.k == 3 and layer.values.shape == (4, 3) and layer.values.dtype == np.float32
    assert layer.values.flags.c_contiguous and layer.indices.dtype == np.int16
    assert (np.diff(layer.indices, axis=1) > 0).all()
    np.testing.assert_array_equal(layer.bias, [0, 2, 3, 5])
    kept = np.take_along_axis(weight[layer.active], layer.indices.astype(int), axis=1)
    np.testing.assert_array_equal(kept, layer.values)
    np.testing.assert_array_equal(layer.to_dense(), weight)
    np.testing.assert_array_equal(layer.dense_bias(), [0, 0, 2, 3, 0, 5])
    x = rng.standard_normal((5, 10)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), (x @ weight.T + bias)[:, layer.active], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(layer(x[0]), layer.forward(x[:1])[0])


def test_index_dtype_follows_n_in_or_request():
    rng = np.random.default_rng(1)
    narrow = CondensedLinear.from_dense(fan_in_weight((2, 32767), 2, rng))
    assert narrow.indices.dtype == np.int16
    wide = CondensedLinear.from_dense(fan_in_weight((2, 32768), 2, rng))
    assert wide.indices.dtype == np.int32
    small = fan_in_weight((3, 8), 2, rng)
    assert CondensedLinear.from_dense(small, index_dtype=np.int32).indices.dtype == np.int32
    with pytest.raises(ValueError, match="int16"):
        CondensedLinear.from_dense(fan_in_weight((2, 32768), 2, rng), index_dtype=np.int16)
    with pytest.raises(TypeError, match="index_dtype"):
        CondensedLinear.from_dense(small, index_dtype=np.int64)


def test_dense_weight_condenses_with_k_equal_n_in():
    weight = np.random.default_rng(2).standard_normal((4, 7)).astype(np.float32)
    layer = CondensedLinear.from_dense(weight)
    assert layer.k == 7 and layer.n_active == 4
    np.testing.assert_array_equal(layer.to_dense(), weight)


def test_csr_round_trips():
    rng = np.random.default_rng(3)
    weight = fan_in_weight((8, 12), 4, rng, ablated=(0, 5))
    layer = CondensedLinear.from_dense(weight)
    csr = layer.to_csr()
    assert isinstance(csr, scipy.sparse.csr_array) and csr.shape == (8, 12)
    np.testing.assert_array_equal(csr.toarray(), weight)
    again = CondensedLinear.from_csr(csr, index_dtype=np.int32)
    np.testing.assert_array_equal(again.to_dense(), weight)
    np.testing.assert_array_equal(again.active, layer.active)
    # Stored zeros are weights: the pattern, not the values, defines the fan-in.
    csr.data[0] = 0.0
    assert CondensedLinear.from_csr(csr).k == 4
    assert CondensedLinear.from_csr(scipy.sparse.coo_matrix(weight)).k == 4


def test_differing_counts_are_refused_naming_rows_and_counts():
    weight = np.zeros((5, 6), dtype=np.float32)
    weight[[0, 1, 2], :2] = 1.0
    weight[4, :3] = 1.0
    with pytest.raises(ValueError, match=r"3 rows have 2 non-zeros \(e.g. rows \[0, 1, 2\]\).*"
                                         r"1 rows have 3 non-zeros \(e.g. rows \[4\]\)"):
        CondensedLinear.from_dense(weight)
    with pytest.raises(ValueError, match="rows"):
        CondensedLinear.from_csr(scipy.sparse.csr_array(weight))


def test_from_csr_refuses_a_complex_matrix():
    # The cast to float32 would drop the imaginary part (NumPy's ComplexWarning) silently.
    matrix = scipy.sparse.csr_array(np.array([[1.0 + 2.0j, 0.0], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="matrix"):
        CondensedLinear.from_csr(matrix)
    with pytest.raises(TypeError, match="matrix"):
        CondensedLinear.from_csr(scipy.sparse.coo_matrix(np.eye(2, dtype=np.complex64)))


@pytest.mark.parametrize("weight, error, match", [
    (np.array([[1.0, np.nan]], dtype=np.float32), ValueError, "finite"),
    (np.array([[1.0, np.inf]]), ValueError, "finite"),
    (np.ones((2, 2, 2), dtype=np.float32), ValueError, "dimensions"),
    (np.ones((2, 2), dtype=np.int32), TypeError, "float32 or float64"),
    ([[1.0, 2.0]], TypeError, "numpy array"),
])
def test_bad_weights_are_refused(weight, error, match):
    with pytest.raises(error, match=match):
        CondensedLinear.from_dense(weight)


def test_bias_is_checked():
    weight = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="bias"):
        CondensedLinear.from_dense(weight, np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        CondensedLinear.from_dense(weight, np.array([1, np.nan, 1], dtype=np.float32))


def test_all_zero_weight_has_no_active_neurons():
    layer = CondensedLinear.from_dense(np.zeros((4, 3), dtype=np.float32))
    assert layer.n_active == 0 and layer.k == 0
    assert layer.forward(np.ones((2, 3), dtype=np.float32)).shape == (2, 0)
    np.testing.assert_array_equal(layer.to_dense(), 0)


def test_constructor_checks_its_invariants():
    values = np.ones((2, 2), dtype=np.float32)
    indices = np.array([[0, 1], [1, 2]], dtype=np.int16)
    CondensedLinear(values, indices, np.array([0, 3]), 4, 3)
    with pytest.raises(ValueError, match="active"):
        CondensedLinear(values, indices, np.array([3, 0]), 4, 3)
    with pytest.raises(ValueError, match="active"):
        CondensedLinear(values, indices, np.array([0, 4]), 4, 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        CondensedLinear(values, indices[:, ::-1].copy(), np.array([0, 3]), 4, 3)
    with pytest.raises(ValueError, match="indices"):
        CondensedLinear(values, indices, np.array([0, 3]), 4, 2)


# --- CondensedConv2d -------------------------------------------------------------------------

@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_conv_matches_dense_conv(stride, padding):
    rng = np.random.default_rng(4)
    conv = Conv2d(3, 5, 3, stride=stride, padding=padding, rng=rng)
    conv.params["weight"][...] = fan_in_weight((5, 3, 3, 3), 4, rng, ablated=(2,))
    conv.params["bias"][...] = rng.standard_normal(5)
    layer = CondensedConv2d.from_dense(conv.params["weight"], conv.params["bias"],
                                         stride=stride, padding=padding)
    assert layer.active.tolist() == [0, 1, 3, 4] and layer.k == 4
    np.testing.assert_array_equal(layer.to_dense(), conv.params["weight"])
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), conv.forward(x, False)[:, layer.active],
                               rtol=1e-5, atol=1e-5)


# --- condense(model) -------------------------------------------------------------------------

def sparsify(model, rng, ablate_every=None, skip_last=True):
    """Constant fan-in masks on every Linear/Conv2d (10% density), random non-zero biases,
    every ``ablate_every``-th neuron ablated except in the last layer."""
    layers = [l for l in model.layers if isinstance(l, (Linear, Conv2d))]
    for i, layer in enumerate(layers):
        weight = layer.params["weight"]
        fan_in = int(np.prod(weight.shape[1:]))
        last = skip_last and i == len(layers) - 1
        ablated = range(0, weight.shape[0], ablate_every) if ablate_every and not last else ()
        weight[...] = fan_in_weight(weight.shape, max(1, fan_in // 10), rng, ablated)
        layer.params["bias"][...] = 0.3 * rng.standard_normal(weight.shape[0])
    return model


def assert_equivalent(model, condensed, x):
    expected = model.forward(x, False)
    logits = condensed.logits(x)
    assert logits.shape == expected.shape and logits.dtype == np.float32
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(condensed.predict(x), expected.argmax(axis=1))


def mlp(rng):
    return Sequential(Flatten(), Linear(64, 40, rng=rng), ReLU(), Linear(40, 30, rng=rng), ReLU(),
                      Dropout(0.5), Linear(30, 10, rng=rng))


def test_condense_mlp_removes_ablated_neurons_structurally():
    rng = np.random.default_rng(5)
    model = sparsify(mlp(rng), rng, ablate_every=4)
    condensed = condense(model)
    linears = [s for s in condensed.stages if isinstance(s, CondensedLinear)]
    assert [l.n_active for l in linears] == [30, 22, 10]
    assert [l.n_in for l in linears] == [64, 30, 22]     # next layer's columns dropped too
    assert not any(isinstance(s, Scatter) for s in condensed.stages)
    assert_equivalent(model, condensed, rng.standard_normal((7, 1, 8, 8)).astype(np.float32))


def test_condense_restores_ablated_outputs_of_the_last_layer():
    rng = np.random.default_rng(6)
    model = sparsify(mlp(rng), rng, ablate_every=3, skip_last=False)
    condensed = condense(model)
    assert isinstance(condensed.stages[-1], Scatter)
    assert_equivalent(model, condensed, rng.standard_normal((5, 64)).astype(np.float32))


def test_condense_conv_model_with_batchnorm_padding_and_flatten():
    rng = np.random.default_rng(7)
    model = Sequential(Conv2d(2, 8, 3, rng=rng), BatchNorm2d(8), ReLU(),
                       Conv2d(8, 6, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                       BatchNorm1d(6 * 4 * 4), Linear(6 * 4 * 4, 12, rng=rng), ReLU(),
                       Linear(12, 5, rng=rng))
    sparsify(model, rng, ablate_every=3)
    for bn in (model.layers[1], model.layers[7]):
        n = bn.num_features
        bn.buffers["running_mean"][...] = rng.standard_normal(n)
        bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, n)
        bn.params["weight"][...] = rng.uniform(0.5, 1.5, n)
        bn.params["bias"][...] = rng.standard_normal(n)
    model.layers[1].params["bias"][...] += 3.0    # removed channels' constants stay > 0
    condensed = condense(model)
    kinds = [s.kind for s in condensed.stages]
    # The BatchNorm is folded into the conv before it; the padded conv sees its removed
    # input channels again (their value is constant); the BatchNorm1d after Flatten
    # follows no conv: a channel affine.
    assert kinds[:4] == ["conv2d", "relu", "scatter", "conv2d"]
    assert kinds.count("channel_affine") == 1
    assert condensed.stages[0].n_active == 5
    assert_equivalent(model, condensed, rng.standard_normal((3, 2, 10, 10)).astype(np.float32))


def test_condense_cnn_folds_removed_channels_into_the_next_bias():
    rng = np.random.default_rng(8)
    model = Sequential(Conv2d(1, 6, 3, rng=rng), ReLU(), Conv2d(6, 4, 3, rng=rng), ReLU(),
                       MaxPool2d(2), Flatten(), Linear(4 * 3 * 3, 5, rng=rng))
    sparsify(model, rng, ablate_every=2)
    condensed = condense(model)
    # Only the output may need restoring (last-layer rows whose weights all hit removed inputs).
    assert "scatter" not in [s.kind for s in condensed.stages][:-1]
    linear = next(s for s in condensed.stages if s.kind == "linear")
    assert condensed.stages[2].in_channels == 3 and linear.n_in == 9 * condensed.stages[2].n_active
    assert_equivalent(model, condensed, rng.standard_normal((4, 1, 10, 10)).astype(np.float32))


def test_ragged_layers_are_padded_when_sparse_and_stay_dense_when_not():
    rng = np.random.default_rng(9)
    model = sparsify(mlp(rng), rng, ablate_every=5)
    weight = model.layers[3].params["weight"]
    weight[1, np.flatnonzero(weight[1] == 0)[:2]] = 1.0      # row 1 now has more weights
    dense_ish = model.layers[6].params["weight"]             # 10 x 30, rows of 17-21
    dense_ish[...] = rng.standard_normal(dense_ish.shape) * (
        np.arange(30) < 17 + np.arange(10)[:, None] % 5)
    with pytest.warns(UserWarning) as caught:
        condensed = condense(model)
    messages = [str(w.message) for w in caught]
    # Its fan-in is counted over the inputs left once layer 1's ablated neurons are gone.
    assert re.fullmatch(r"condense: 3.weight \(Linear\(40, 30\)\) is padded: fan-in 1-5, "
                        r"padded to 5 \(\+48.1% multiply-adds\)", messages[0]), messages
    assert messages[1].startswith("condense: 6.weight (Linear(30, 10)) stays dense: fan-in ")
    assert [s.kind for s in condensed.stages].count("dense_linear") == 1
    assert [entry["result"] for entry in condensed.report] == ["condensed", "padded", "dense"]
    padded = condensed.report[1]
    assert padded["k"] == 5 and padded["fan_in"] == [1, 5] and padded["n_active"] == 24
    assert_equivalent(model, condensed, rng.standard_normal((6, 64)).astype(np.float32))


def test_condense_refuses_unknown_layers():
    class Odd(Layer):
        pass

    with pytest.raises(TypeError, match="layer 1: Odd"):
        condense(Sequential(Linear(3, 2, rng=np.random.default_rng(0)), Odd()))
    with pytest.raises(TypeError, match="Sequential"):
        condense([Linear(3, 2, rng=np.random.default_rng(0))])


# --- save / load -----------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(10)
    model = Sequential(Conv2d(1, 4, 3, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(4 * 3 * 3, 6, rng=rng), ReLU(), Linear(6, 3, rng=rng))
    sparsify(model, rng, ablate_every=3, skip_last=False)
    condensed = condense(model)
    path = tmp_path / "model.npz"
    condensed.save(path)
    return condensed, path, rng.standard_normal((2, 1, 8, 8)).astype(np.float32)


def test_save_load_round_trip(saved, tmp_path):
    condensed, path, x = saved
    loaded = load(path)
    assert [s.kind for s in loaded.stages] == [s.kind for s in condensed.stages]
    np.testing.assert_array_equal(loaded.logits(x), condensed.logits(x))
    assert CondensedModel.load(path).predict(x).tolist() == condensed.predict(x).tolist()
    assert os.listdir(tmp_path) == ["model.npz"]      # no temporary file left behind


def rewrite(path, change):
    """Load the archive's arrays, let ``change`` edit the dict, save it back."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    np.savez(path, **arrays)


def set_metadata(arrays, edit):
    metadata = json.loads(str(arrays["metadata"]))
    edit(metadata)
    arrays["metadata"] = np.array(json.dumps(metadata))


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(format_version=np.array(3)), ValueError, "format_version"),
    (lambda a: a.update(format_version=np.array(1)), ValueError, "format_version"),
    (lambda a: a.pop("format_version"), ValueError, "format_version"),
    (lambda a: a.update(metadata=np.array("{not json")), ValueError, "JSON"),
    (lambda a: set_metadata(a, lambda m: m.update(format="other")), ValueError, "format"),
    (lambda a: set_metadata(a, lambda m: m["stages"][0].update(type="mystery")), ValueError,
     "unknown type"),
    (lambda a: set_metadata(a, lambda m: m["stages"][0].pop("n_in")), ValueError, "n_in"),
    (lambda a: set_metadata(a, lambda m: m["stages"][0].update(n_in=-1)), ValueError, "n_in"),
    (lambda a: a["stage0.indices"].__setitem__((0, 0), 9), ValueError, "indices"),
    (lambda a: a.update({"stage4.indices": a["stage4.indices"] + 100}), ValueError, "indices"),
    (lambda a: a.update({"stage4.indices": a["stage4.indices"].astype(np.int64)}), TypeError,
     "indices"),
    (lambda a: a.update({"stage4.values": a["stage4.values"].astype(np.float64)}), TypeError,
     "values"),
    (lambda a: a.update({"stage4.values": a["stage4.values"][:, :1]}), ValueError, "indices"),
    (lambda a: a.update({"stage4.active": a["stage4.active"][::-1].copy()}), ValueError, "active"),
    (lambda a: a.update({"stage4.bias": a["stage4.bias"][:1]}), ValueError, "bias"),
    (lambda a: a.pop("stage4.values"), ValueError, "stage4.values"),
    (lambda a: a.update(extra=np.zeros(1)), ValueError, "unexpected"),
    (lambda a: a.update({"stage7.positions": a["stage7.positions"] + 50}), ValueError,
     "positions"),
])
def test_load_refuses_crafted_files(saved, change, error, match):
    _, path, _ = saved
    rewrite(path, change)
    with pytest.raises(error, match=match):
        load(path)


@pytest.mark.parametrize("member", ["zzz.npy", "stage99.values.npy", "stage0.extra.npy"])
def test_a_member_the_stages_do_not_name_is_refused_before_it_is_inflated(saved, member):
    """One more deflated member, 32 MiB of zeros in a few kB: refused by its name once the
    metadata is read, before any array is (it was inflated, then refused)."""
    from npz_files import add_zeros, peak_bytes
    _, path, _ = saved
    add_zeros(path, member, 32 << 20, npy_header((8 << 20,)))
    error, peak = peak_bytes(lambda: load(path))
    assert str(error) == f"unexpected arrays in {path}: {[member[:-4]]}" and peak < 4 << 20


def test_deep_or_huge_metadata_is_one_line_naming_the_file(saved, tmp_path):
    """json.loads raised RecursionError (a traceback) on 50,000 nested lists."""
    from npz_files import peak_bytes, replace_with_zeros
    _, path, _ = saved

    def deep(arrays):
        metadata = json.loads(str(arrays["metadata"]))
        metadata["note"] = "HOLE"
        arrays["metadata"] = np.array(json.dumps(metadata).replace('"HOLE"',
                                                                   "[" * 50000 + "]" * 50000))
    rewrite(path, deep)
    with pytest.raises(ValueError) as error:
        load(path)
    assert str(error.value) == (f"{path}: metadata: JSON nested 50001 deep, more than the "
                                f"32 levels srigl_np reads")
    huge = replace_with_zeros(path, tmp_path / "huge.npz", "metadata.npy", 4 * 50_000_000,
                              npy_header((), "<U50000000"))
    error, peak = peak_bytes(lambda: load(huge))
    assert peak < 1 << 20 and str(error) == (f"{huge}: metadata declares 50000000 characters "
                                             f"of JSON, more than the 4194304 srigl_np reads")


def test_a_layer_whose_big_arrays_do_not_fit_its_settings_is_refused_before_reading(
        saved, tmp_path):
    """stage0.values swapped for 64 MiB of deflated zeros (a few kB) declaring 4096 rows,
    more than the layer's n_out: refused from the headers (it was inflated, then
    refused by the layer's constructor)."""
    from npz_files import peak_bytes, replace_with_zeros
    _, path, _ = saved
    huge = replace_with_zeros(path, tmp_path / "huge.npz", "stage0.values.npy", 64 << 20,
                              npy_header((4096, 4096)))
    error, peak = peak_bytes(lambda: load(huge))
    assert peak < 4 << 20, peak
    assert str(error).startswith("stage 0 (") and "do not fit its settings" in str(error)


def test_load_refuses_files_that_are_not_archives(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"definitely not a zip")
    with pytest.raises(ValueError, match="npz"):
        load(path)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="npz"):
        load(tmp_path / "array.npy")


# --- condense computes the model's function ---------------------------------------------

@given(case=sparse_models())
def test_property_condense_computes_the_models_eval_forward(case):
    """Whatever the architecture, sparsity and ablation: the condensed model's logits are
    the trained model's evaluation forward, up to float32 rounding."""
    expected = case.model.forward(case.x, training=False)
    got = condense(case.model).logits(case.x)
    assert got.shape == expected.shape and got.dtype == np.float32
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * scale,
                               err_msg=f"seed {case.seed}, model {case.model!r}")


# --- masks are the truth ----------------------------------------------------------------

def _masked_mlp_with_zeros_in_the_masks(rng):
    """An mlp with constant fan-in masks, where some weights inside the masks are exactly
    0 (grown at a zero gradient): by ``weight != 0`` its rows look ragged."""
    model = sparsify(mlp(rng), rng, ablate_every=5)
    masks = {name: p != 0 for name, p in model.named_parameters().items()
             if name.endswith("weight")}
    for name in ("1.weight", "3.weight"):
        weight = model.named_parameters()[name]
        rows, cols = np.nonzero(masks[name])
        weight[rows[::7], cols[::7]] = 0.0       # still in the mask
    return model, masks


def test_condense_by_masks_keeps_zero_weights_inside_the_mask():
    rng = np.random.default_rng(31)
    model, masks = _masked_mlp_with_zeros_in_the_masks(rng)
    condensed = condense(model, masks=masks)
    assert [s.kind for s in condensed.stages if "linear" in s.kind] == ["linear"] * 3
    assert all(e["structure"] == "mask" and e["result"] == "condensed"
               for e in condensed.report)
    first = condensed.stages[1]
    assert first.nnz == int(masks["1.weight"].sum())                # the zeros are entries
    assert int((first.values == 0).sum()) == int((masks["1.weight"] & (
        model.layers[1].params["weight"] == 0)).sum())
    assert_equivalent(model, condensed, rng.standard_normal((5, 64)).astype(np.float32))


def test_condense_without_masks_says_so_and_warns_naming_the_ragged_layer():
    rng = np.random.default_rng(32)
    model, _ = _masked_mlp_with_zeros_in_the_masks(rng)
    with pytest.warns(UserWarning) as caught:
        condensed = condense(model)
    assert [str(w.message).split(" is padded: ")[0] for w in caught] == [
        "condense: 1.weight (Linear(64, 40))", "condense: 3.weight (Linear(40, 30))"]
    assert all(re.search(r"fan-in \d-\d, padded to \d \(\+\d+\.\d% multiply-adds\)",
                         str(w.message)) for w in caught)
    assert {e["structure"] for e in condensed.report} == {"weight != 0"}
    assert [e["result"] for e in condensed.report][:2] == ["padded", "padded"]
    assert_equivalent(model, condensed, rng.standard_normal((5, 64)).astype(np.float32))


def test_condense_takes_the_masks_of_a_dynamic_sparsity():
    from srigl_np.nn.optim import SGD
    from srigl_np.dst.sparsity import DynamicSparsity

    rng = np.random.default_rng(33)
    model = mlp(rng)
    sparsity = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method="srigl",
                               sparsity=0.8, t_end=100)
    model.layers[1].params["weight"][sparsity.masks["1.weight"]] *= (
        np.arange(sparsity.masks["1.weight"].sum()) % 5 != 0)      # zeros inside the mask
    condensed = condense(model, masks=sparsity, warn=False)
    assert [e["result"] for e in condensed.report] == ["condensed"] * 3
    assert condensed.stages[1].k == int(sparsity.masks["1.weight"][0].sum())


@pytest.mark.parametrize("masks, error, match", [
    ({"1.weight": np.ones((40, 64), dtype=np.float32)}, TypeError, r"masks\['1.weight'\] must be bool"),
    ({"1.weight": np.ones((40, 63), dtype=bool)}, ValueError, r"masks\['1.weight'\] must have shape"),
    ({"1.weight": np.zeros((40, 64), dtype=bool)}, ValueError, "non-zero weights lie outside"),
    ({"2.weight": np.ones((1, 1), dtype=bool)}, ValueError, "no sparse weight"),
    ([np.ones(3, dtype=bool)], TypeError, "masks must be None, a dict"),
])
def test_condense_refuses_masks_that_do_not_fit(masks, error, match):
    rng = np.random.default_rng(34)
    with pytest.raises(error, match=match):
        condense(sparsify(mlp(rng), rng), masks=masks)


# --- what inference needs beyond weights ------------------------------------------------------

def test_raw_images_are_normalised_with_the_stored_statistics(tmp_path):
    from srigl_np.data import normalize

    rng = np.random.default_rng(35)
    model = Sequential(Flatten(), Linear(64, 12, rng=rng), ReLU(), Linear(12, 4, rng=rng))
    sparsify(model, rng)
    raw = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    stats = (0.29, 0.35)
    condensed = condense(model, input_stats=stats)
    expected = model.forward(normalize(raw, *stats), training=False)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(condensed.logits(raw), expected, atol=1e-5 * scale)
    np.testing.assert_allclose(condensed(raw), condensed.logits(normalize(raw, *stats)),
                               atol=1e-5 * scale)
    assert condensed.n_classes == 4
    condensed.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert loaded.n_classes == 4 and loaded.input_stats[0].tolist() == [0.29]
    np.testing.assert_array_equal(loaded.predict(raw), condensed.predict(raw))
    with pytest.raises(ValueError, match="stores no input normalisation"):
        condense(model).logits(raw)


def test_predict_proba_is_the_softmax_of_the_logits():
    rng = np.random.default_rng(36)
    condensed = condense(sparsify(mlp(rng), rng))
    x = rng.standard_normal((5, 64)).astype(np.float32)
    p = condensed.predict_proba(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(axis=1), condensed.predict(x))
    logits = condensed(x).astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("entry, match", [
    ({"mean": [0.1]}, "'input' must be"),
    ({"mean": [0.1], "std": [0.0]}, "std > 0"),
    ({"mean": [0.1, 0.2], "std": [1.0]}, "of one length"),
])
def test_load_refuses_bad_input_statistics(saved, entry, match):
    _, path, _ = saved
    rewrite(path, lambda a: set_metadata(a, lambda m: m.update(input=entry)))
    with pytest.raises(ValueError, match=match):
        load(path)


def test_load_refuses_a_bad_class_count(saved):
    _, path, _ = saved
    rewrite(path, lambda a: set_metadata(a, lambda m: m.update(n_classes=True)))
    with pytest.raises(ValueError, match="n_classes"):
        load(path)


def test_a_file_without_input_statistics_or_class_count_still_loads(saved):
    _, path, _ = saved
    rewrite(path, lambda a: set_metadata(a, lambda m: (m.pop("input", None),
                                                        m.pop("n_classes", None))))
    model = load(path)
    assert model.input_stats is None and model.n_classes is None


# --- a condensed layer as a sparse matrix ------------------------------------------------------

def test_a_condensed_layer_reads_like_a_scipy_matrix():
    rng = np.random.default_rng(37)
    weight = fan_in_weight((7, 12), 3, rng, ablated=(2, 5))
    layer = CondensedLinear.from_dense(weight, rng.standard_normal(7).astype(np.float32))
    assert layer.shape == (7, 12) and layer.nnz == 5 * 3
    np.testing.assert_array_equal(layer.toarray(), weight)
    x = rng.standard_normal(12).astype(np.float32)
    np.testing.assert_allclose(layer @ x, weight @ x, rtol=1e-6, atol=1e-6)
    m = rng.standard_normal((12, 4)).astype(np.float32)
    np.testing.assert_allclose(layer @ m, weight @ m, rtol=1e-6, atol=1e-6)
    assert (layer @ m)[[2, 5]].tolist() == [[0.0] * 4] * 2          # ablated rows
    # forward covers the active neurons only: output j is neuron active[j].
    y = layer.forward(m.T)
    np.testing.assert_allclose(y, (weight @ m).T[:, layer.active] + layer.bias, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"x must have shape \(12,\)"):
        layer @ np.ones(11, np.float32)


# --- issue 13: bad model files and conv geometry ----------------------------------------

def test_load_refuses_crafted_bad_files_with_value_error(tmp_path):
    import zipfile
    from srigl_np.inference import condensed_model
    good = tmp_path / "good.npz"
    np.savez(good, format_version=np.array(1), metadata=np.array("{}"))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:40])
    not_npy = tmp_path / "not_npy.npz"
    with zipfile.ZipFile(not_npy, "w") as zf:
        zf.writestr("format_version.txt", b"1")
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as zf:
        zf.writestr("format_version.npy", npy_header((2**40, 2**20)))
    inflated = tmp_path / "inflated.npz"   # member larger than its npy header declares
    with zipfile.ZipFile(inflated, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("format_version.npy", npy_header((1,)) + bytes(1 << 24))
    for path, message in [(truncated, "is not a readable .npz file"),
                          (not_npy, "member 'format_version.txt' is not a .npy array"),
                          (huge, "declares shape (1099511627776, 1048576)"),
                          (inflated, "declares shape (1,) of float32 (4 bytes), but the member "
                                     "holds 16777216")]:
        with pytest.raises(ValueError) as info:
            condensed_model.load(path)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_load_refuses_a_member_whose_zip_header_size_is_a_lie(tmp_path):
    import zipfile
    from srigl_np.inference import condensed_model
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("format_version.npy", npy_header((1,)) + bytes(4))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        size = zf.infolist()[0].file_size
    old = size.to_bytes(4, "little")
    raw = raw.replace(old, (2**31).to_bytes(4, "little"))   # local and central headers
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="declares 2147483648 bytes, more than"):
        condensed_model.load(path)


@pytest.mark.parametrize("kernel_size, stride, padding, message", [
    (3, 1, 2**20, "padding must be < 1048576"),
    (3, 2**31, 0, "stride must be < 1048576"),
    ((3, 2**30), 1, 0, "kernel_size must be < 1048576"),
])
def test_conv_geometry_has_an_upper_bound(kernel_size, stride, padding, message):
    from srigl_np.inference.condensed import conv_geometry
    with pytest.raises(ValueError, match=message):
        conv_geometry(kernel_size, stride, padding)
    assert conv_geometry(3, 1, 2**20 - 1) == ((3, 3), 1, 2**20 - 1)


def test_load_refuses_a_pickle_without_advice_to_unpickle_it(tmp_path):
    import pickle

    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError) as error:
        load(path)
    assert str(path) in str(error.value) and "allow_pickle" not in str(error.value)


def test_logits_never_change_the_callers_input_even_when_relu_comes_first():
    from srigl_np.inference.condensed_model import CondensedModel, Relu

    x = np.array([[-1.0, 2.0, -3.0]], dtype=np.float32)
    kept = x.copy()
    y = CondensedModel([Relu(), Relu()]).logits(x)
    np.testing.assert_array_equal(y, [[0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(x, kept)
