"""The CuPy condensed path: stage conversion checked on the CPU, the kernels on a GPU.

``cuda.stage_functions`` turns a CondensedModel into functions of one array module; run
with NumPy and a NumPy reference product it must reproduce ``CondensedModel.logits``,
which checks the conversion without a GPU. The ``gpu``-marked tests run the CUDA
kernels themselves and skip, with the reason, when CuPy or a GPU is missing.
"""

import numpy as np
import pytest

from srigl_np import condensed as C
from srigl_np import cuda
from srigl_np.layers import (
    BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential)
from test_condensed import constant_fan_in, mlp, sparsify

GPU_REASON = "needs CuPy and a CUDA GPU"


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
def test_stage_functions_reproduce_the_condensed_model(build, x_shape):
    rng = np.random.default_rng(11)
    condensed = C.condense(build(rng))
    kinds = {stage.kind for stage in condensed.stages}
    assert "linear" in kinds
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = x
    for forward in cuda.stage_functions(condensed, np, reference_product):
        y = forward(y)
    np.testing.assert_allclose(y, condensed.logits(x), rtol=1e-5, atol=1e-5)


def test_to_cpu_is_the_model_itself_and_bad_devices_are_refused():
    rng = np.random.default_rng(12)
    condensed = C.condense(sparsify(mlp(rng), rng))
    assert condensed.to("cpu") is condensed
    layer = C.CondensedLinear.from_dense(constant_fan_in((6, 9), 3, rng))
    assert layer.to("cpu") is layer
    with pytest.raises(ValueError, match="device"):
        condensed.to("gpu")


def test_to_cuda_without_cupy_is_one_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)   # as if CuPy were not installed
    rng = np.random.default_rng(13)
    with pytest.raises(cuda.DeviceError, match="needs CuPy"):
        C.condense(sparsify(mlp(rng), rng)).to("cuda")


def test_bench_device_cuda_without_cupy_exits_with_one_line(monkeypatch, capsys):
    import sys

    from srigl_np import bench

    monkeypatch.setitem(sys.modules, "cupy", None)
    assert bench.main(["--device", "cuda", "--quick", "--shape", "16x8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs CuPy" in err[0]


# --- on a GPU --------------------------------------------------------------------------

@pytest.fixture
def cp():
    try:
        return cuda.cupy()
    except cuda.DeviceError:
        pytest.skip(GPU_REASON)


@pytest.mark.gpu
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
@pytest.mark.parametrize("n_out, n_in, k, batch", [
    (1, 1, 1, 1), (5, 40, 1, 3), (7, 33, 33, 9), (300, 784, 78, 1), (96, 200, 20, 256),
    (64, 4096, 410, 257)])
def test_cuda_kernel_matches_reference(cp, index_dtype, n_out, n_in, k, batch):
    rng = np.random.default_rng(n_out * 1000 + k)
    weight = constant_fan_in((n_out, n_in), k, rng)
    layer = C.CondensedLinear.from_dense(weight, rng.standard_normal(n_out).astype(np.float32),
                                         index_dtype=index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    expected = reference_product(layer.values, layer.indices, x, layer.bias)
    values, indices = cp.asarray(layer.values), cp.asarray(layer.indices)
    got = cuda.condensed_forward(values, indices, cp.asarray(x), cp.asarray(layer.bias))
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=1e-5, atol=1e-5)
    # Non-contiguous float64 input is converted, not refused.
    x64 = cp.asarray(np.asfortranarray(x.astype(np.float64)))
    np.testing.assert_allclose(cp.asnumpy(cuda.condensed_forward(values, indices, x64)),
                               expected - layer.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_model_predicts_like_the_cpu_model(cp):
    rng = np.random.default_rng(14)
    condensed = C.condense(conv_model(rng))
    x = rng.standard_normal((6, 2, 10, 10)).astype(np.float32)
    on_gpu = condensed.to("cuda")
    np.testing.assert_allclose(cp.asnumpy(on_gpu.logits(x)), condensed.logits(x),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cp.asnumpy(on_gpu.predict(x)), condensed.predict(x))
    assert on_gpu.to("cpu") is condensed


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
