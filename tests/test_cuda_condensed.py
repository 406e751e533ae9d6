"""The condensed model on a GPU: moving it, the validated GPU weights, the CUDA kernels.

The ``device`` fixture (tests/fake_cupy.py) runs each device test twice: on a fake CuPy
that takes every device branch on the CPU (only the kernel launch is replaced by the
NumPy definition of the product), and on a real GPU, skipped with the reason when CuPy
or a GPU is missing. The other ``gpu``-marked tests run the CUDA kernels themselves.
"""

import numpy as np
import pytest

from srigl_np import backend, cuda
from srigl_np.inference.condensed import CondensedLinear
from srigl_np.inference.condensing import condense
from srigl_np.backend import is_cupy_array, to_device, to_numpy
from srigl_np.kernels import condensed_product
from srigl_np.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.nn.normalization import BatchNorm2d
from fake_cupy import device, real_cupy as cp  # noqa: F401  (fixtures)
from strategies import fan_in_weight
from test_condensed import mlp, sparsify


def reference_product(values, indices, x, bias):
    """y[b, r] = sum_j values[r, j] * x[b, indices[r, j]] (+ bias[r])."""
    y = (values[None, :, :] * x[:, indices]).sum(axis=2, dtype=np.float32)
    return y if bias is None else y + bias


def conv_model(rng):
    model = Sequential(Conv2d(2, 8, 3, rng=rng), BatchNorm2d(8), ReLU(),
                       Conv2d(8, 6, 3, padding=1, stride=2, rng=rng), ReLU(), MaxPool2d(2),
                       Flatten(), Linear(6 * 2 * 2, 12, rng=rng), ReLU(),
                       Linear(12, 5, rng=rng))
    model.layers[1].buffers["running_var"][...] = rng.uniform(0.5, 2.0, 8)
    model.layers[1].params["bias"][...] = rng.standard_normal(8) + 2.0
    return sparsify(model, rng, ablate_every=3)


def sparse_mlp(rng, skip_last=True):
    return sparsify(mlp(rng), rng, ablate_every=4, skip_last=skip_last)


@pytest.mark.parametrize("build, x_shape", [
    (sparse_mlp, (7, 64)),
    (lambda rng: sparse_mlp(rng, skip_last=False), (3, 1, 8, 8)),   # ends in a Scatter
    (conv_model, (4, 2, 10, 10))])
@pytest.mark.parametrize("batch_scale", [1, 3])   # > SMALL_BATCH rows take the other kernel
def test_the_model_on_the_device_computes_what_it_does_on_the_cpu(device, build, x_shape,
                                                                  batch_scale):
    name, atol = device
    rng = np.random.default_rng(11)
    condensed = condense(build(rng))
    assert "linear" in {stage.kind for stage in condensed.stages}
    x = rng.standard_normal((x_shape[0] * batch_scale,) + x_shape[1:]).astype(np.float32)
    on_device = condensed.to(name)
    assert on_device is not condensed and on_device.device == "cuda:0"
    assert all(stage.device in ("cpu", "cuda:0") for stage in on_device.stages)
    for x_in in (x, to_device(x, name)):   # host or device input
        logits = on_device.logits(x_in)
        assert is_cupy_array(logits)
        np.testing.assert_allclose(to_numpy(logits), condensed.logits(x), rtol=1e-5,
                                   atol=max(atol, 1e-5))
        np.testing.assert_array_equal(to_numpy(on_device.predict(x_in)), condensed.predict(x))
    back = on_device.to("cpu")
    assert back.device == "cpu" and not any(
        is_cupy_array(v) for stage in back.stages for v in vars(stage).values())
    np.testing.assert_array_equal(back.logits(x), condensed.logits(x))


def ragged_model(rng):
    """Ragged fan-in everywhere: DenseConv2d and DenseLinear stages."""
    model = Sequential(Conv2d(2, 4, 3, rng=rng), ReLU(), Flatten(), Linear(4 * 8 * 8, 5, rng=rng))
    for name, weight in model.named_parameters().items():
        if name.endswith("weight"):
            weight[rng.random(weight.shape) < 0.5] = 0.0
    return model


@pytest.mark.parametrize("build, x_shape", [
    (sparse_mlp, (7, 64)),
    (lambda rng: sparse_mlp(rng, skip_last=False), (3, 1, 8, 8)),   # ends in a Scatter
    (conv_model, (4, 2, 10, 10)),
    (ragged_model, (2, 2, 10, 10))])
def test_an_empty_batch_gives_empty_logits_and_predictions(device, build, x_shape):
    """NumPy's reshape error before: Flatten's reshape(0, -1) cannot infer the -1."""
    name, _ = device
    rng = np.random.default_rng(12)
    model = build(rng)
    condensed = condense(model, warn=False)
    n_classes = condensed.logits(np.zeros((1,) + x_shape[1:], np.float32)).shape[1]
    empty = np.zeros((0,) + x_shape[1:], np.float32)
    assert model.forward(empty, training=False).shape == (0, n_classes)
    for on in (condensed, condensed.to(name)):
        for x in (empty, to_device(empty, on.device)):
            logits, proba = to_numpy(on.logits(x)), to_numpy(on.predict_proba(x))
            predicted = to_numpy(on.predict(x))
            assert logits.shape == proba.shape == (0, n_classes)
            assert logits.dtype == proba.dtype == np.float32
            assert predicted.shape == (0,) and predicted.dtype == np.int64
    raw = np.zeros((0,) + x_shape[2:], np.uint8)   # raw images (batch, H, W) too
    if len(x_shape) == 4 and x_shape[1] == 1:
        with_stats = condense(model, input_stats=(0.5, 0.25), warn=False)
        assert with_stats.predict(raw).shape == (0,)


def test_a_device_model_saves_what_the_cpu_model_saves(device, tmp_path):
    name, _ = device
    rng = np.random.default_rng(15)
    condensed = condense(conv_model(rng))
    condensed.save(tmp_path / "cpu.npz")
    condensed.to(name).save(tmp_path / "device.npz")
    with np.load(tmp_path / "cpu.npz") as a, np.load(tmp_path / "device.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_layer_moves_and_comes_back_unchanged(device):
    name, _ = device
    rng = np.random.default_rng(16)
    layer = CondensedLinear.from_dense(fan_in_weight((6, 9), 3, rng),
                                       rng.standard_normal(6).astype(np.float32))
    on_device = layer.to(name)
    assert isinstance(on_device.weights, cuda.CudaCondensedWeights)
    assert on_device.device == "cuda:0" and on_device.to(name) is on_device
    back = on_device.to("cpu")
    np.testing.assert_array_equal(back.values, layer.values)
    np.testing.assert_array_equal(back.indices, layer.indices)
    np.testing.assert_array_equal(back.to_dense(), layer.to_dense())
    np.testing.assert_array_equal(on_device.to_dense(), layer.to_dense())


# --- the GPU weights: checked once, then immutable ------------------------------------

def _weights_arguments(rng, index_dtype=np.int16):
    indices = np.sort(np.argsort(rng.random((4, 10)), axis=1)[:, :3], axis=1)
    return rng.standard_normal((4, 3)).astype(np.float32), indices.astype(index_dtype), 10


@pytest.mark.parametrize("change, error, match", [
    (lambda v, i, n: (v.astype(np.float64), i, n), TypeError, "values must be float32"),
    (lambda v, i, n: (v, i.astype(np.int64), n), TypeError, "indices must be int16 or int32"),
    (lambda v, i, n: (v, i[:, :2], n), ValueError, "indices must have shape"),
    (lambda v, i, n: (v[0], i[0], n), ValueError, "values must have 2 dimensions"),
    (lambda v, i, n: (v[:, :0], i[:, :0], n), ValueError, "k >= 1"),
    (lambda v, i, n: (v, i, 0), ValueError, "n_in"),
    (lambda v, i, n: (v, i, True), TypeError, "n_in"),   # a bool is not an integer
    (lambda v, i, n: (v, _set(i, (0, 0), n), n), ValueError, r"\[0, n_in=10\)"),
    (lambda v, i, n: (v, _set(i, (3, 2), -1), n), ValueError, r"\[0, n_in=10\)"),
    (lambda v, i, n: (_set(v, (1, 1), np.nan), i, n), ValueError, "finite"),
    (lambda v, i, n: ([[1.0]], [[0]], n), TypeError, "values must be a NumPy or CuPy array"),
])
def test_gpu_weights_refuse_bad_arguments(device, change, error, match):
    values, indices, n_in = change(*_weights_arguments(np.random.default_rng(0)))
    with pytest.raises(error, match=match):
        cuda.CudaCondensedWeights(values, indices, n_in)


def _set(a, where, value):
    a = a.copy()
    a[where] = value
    return a


def test_gpu_weights_accept_the_last_column_and_hand_out_copies(device):
    values, indices, n_in = _weights_arguments(np.random.default_rng(1), np.int32)
    indices[0, -1] = n_in - 1
    weights = cuda.CudaCondensedWeights(values, indices, n_in)
    handed_out = weights.indices
    handed_out[...] = n_in + 100   # changes the copy only
    np.testing.assert_array_equal(to_numpy(weights.indices), indices)
    np.testing.assert_array_equal(to_numpy(weights.values), values)


def test_the_gpu_product_checks_its_operands(device):
    name, _ = device
    values, indices, n_in = _weights_arguments(np.random.default_rng(2))
    weights = cuda.CudaCondensedWeights(values, indices, n_in)
    x = to_device(np.ones((2, n_in), np.float32), name)
    with pytest.raises(TypeError, match="x must be a CuPy array"):
        condensed_product(weights, np.ones((2, n_in), np.float32))
    with pytest.raises(ValueError, match="n_in=10"):
        condensed_product(weights, x[:, :5])
    with pytest.raises(TypeError, match="x must be a floating-point"):
        condensed_product(weights, x.astype(np.int32))
    with pytest.raises(ValueError, match="bias must have shape"):
        condensed_product(weights, x, to_device(np.ones(3, np.float32), name))
    with pytest.raises(TypeError, match="bias must be a CuPy array"):
        condensed_product(weights, x, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="weights must be a CudaCondensedWeights"):
        cuda.condensed_product(values, x)   # raw arrays are never accepted
    host = CondensedLinear.from_dense(np.eye(n_in, dtype=np.float32)).weights
    with pytest.raises(TypeError, match="weights live on the CPU"):
        condensed_product(host, x)
    assert condensed_product(weights, x[:0]).shape == (0, 4)


def test_to_cpu_is_the_model_itself_and_bad_devices_are_refused():
    rng = np.random.default_rng(12)
    condensed = condense(sparsify(mlp(rng), rng))
    assert condensed.to("cpu") is condensed
    layer = CondensedLinear.from_dense(fan_in_weight((6, 9), 3, rng))
    assert layer.to("cpu") is layer
    with pytest.raises(ValueError, match="device"):
        condensed.to("gpu")


def test_to_cuda_without_cupy_is_one_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)   # as if CuPy were not installed
    rng = np.random.default_rng(13)
    with pytest.raises(backend.DeviceError, match="needs CuPy"):
        condense(sparsify(mlp(rng), rng)).to("cuda")


def test_bench_device_cuda_without_cupy_exits_with_one_line(monkeypatch, capsys):
    import sys

    from srigl_np import bench

    monkeypatch.setitem(sys.modules, "cupy", None)
    assert bench.main(["--device", "cuda", "--quick", "--shape", "16x8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs CuPy" in err[0]


# --- on a GPU --------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
@pytest.mark.parametrize("n_out, n_in, k, batch", [
    (1, 1, 1, 1), (5, 40, 1, 3), (7, 33, 33, 9), (300, 784, 78, 1), (96, 200, 20, 256),
    (64, 4096, 410, 257)])
def test_cuda_kernel_matches_reference(cp, index_dtype, n_out, n_in, k, batch):
    rng = np.random.default_rng(n_out * 1000 + k)
    weight = fan_in_weight((n_out, n_in), k, rng)
    layer = CondensedLinear.from_dense(weight, rng.standard_normal(n_out).astype(np.float32),
                                       index_dtype=index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    expected = reference_product(layer.values, layer.indices, x, layer.bias)
    weights = cuda.CudaCondensedWeights.from_host(layer.weights)
    got = condensed_product(weights, cp.asarray(x), cp.asarray(layer.bias))
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=1e-5, atol=1e-5)
    # Non-contiguous float64 input is converted, not refused.
    x64 = cp.asarray(np.asfortranarray(x.astype(np.float64)))
    np.testing.assert_allclose(cp.asnumpy(condensed_product(weights, x64)),
                               expected - layer.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_model_predicts_like_the_cpu_model(cp):
    rng = np.random.default_rng(14)
    condensed = condense(conv_model(rng))
    x = rng.standard_normal((6, 2, 10, 10)).astype(np.float32)
    on_gpu = condensed.to("cuda")
    np.testing.assert_allclose(cp.asnumpy(on_gpu.logits(x)), condensed.logits(x),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cp.asnumpy(on_gpu.predict(x)), condensed.predict(x))
    assert on_gpu.to("cpu").device == "cpu"


@pytest.mark.gpu
def test_bench_runs_on_the_gpu(cp, tmp_path):
    import json

    from srigl_np import bench

    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cuda", "--quick", "--shape", "64x32",
                       "--batch-sizes", "1", "256", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert {r["implementation"] for r in records} == {"dense", "structured", "csr", "condensed"}
    assert all(r["device"] == "cuda:0" and r["median_s"] > 0 for r in records)
