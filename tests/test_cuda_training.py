"""The training products on CuPy arrays (training_kernels' device branches, cuda_training).

The ``device`` fixture (tests/fake_cupy.py) runs each test on a fake CuPy, where the three
launches of ``cuda_training`` are the NumPy definitions behind assertions of what the
kernels assume (device arrays, C-contiguous, one dtype, matching shapes), and again on a
real GPU (marked ``gpu``; skipped with the reason without CuPy or a GPU), where the CUDA
kernels run. The matrix is test_training_kernels' own: float32 and float64, int16 and int32
indices, k = 1, one neuron, batch 1, a dense row, strided activations. The kernel source
itself runs on the CPU in test_cuda_training_source.py.
"""

import numpy as np
import pytest

from fake_cupy import device, real_cupy as cp  # noqa: F401  (fixtures)
from srigl_np import cuda_training
from srigl_np import training_kernels as tk
from srigl_np.backend import is_cupy_array, to_device, to_numpy
from test_training_kernels import CONV_CASES, LINEAR_SHAPES, _conv_problem, assert_near, make_layer

DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int16, np.int32]


def on_device(name, **arrays):
    return {key: to_device(a, name) for key, a in arrays.items()}


def strided_on_device(a, name):
    """``a`` on the device as a non-contiguous view (every other column of a wider array)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    view = to_device(wide, name)[..., ::2]
    assert not view.flags.c_contiguous or a.shape[-1] == 1
    return view


def host(a):
    """A device result on the host, after checking it stayed on the device and is laid out
    as the CPU path lays out its results (C-contiguous)."""
    assert is_cupy_array(a), f"{type(a).__name__} left the device"
    assert a.flags.c_contiguous
    return to_numpy(a)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, n_in, k, batch", LINEAR_SHAPES)
def test_linear_products_on_the_device_match_the_definition(device, n, n_in, k, batch, dtype,
                                                            index_dtype):
    name, _ = device
    rng = np.random.default_rng(n * 1000 + n_in + k + batch)
    values, indices = make_layer(rng, n, n_in, k, dtype, index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    on = on_device(name, values=values, indices=indices, bias=bias)
    # Column-major dy: the transpose of a device copy of dy^T.
    dev_x, dev_dy = strided_on_device(x, name), to_device(np.ascontiguousarray(dy.T), name).T

    y = tk.linear_forward(on["values"], on["indices"], dev_x, on["bias"])
    assert_near(host(y), tk.linear_forward_reference(values, indices, x, bias), dtype)
    dx, dvalues = tk.linear_backward(on["values"], on["indices"], dev_x, dev_dy)
    assert_near(host(dx), tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)
    assert_near(host(dvalues), tk.linear_weight_grad_reference(indices, x, dy), dtype)

    # The single products, a kept column form and a prebuilt transposed index run the
    # same kernels on the same operands: the same arrays.
    np.testing.assert_array_equal(
        host(tk.linear_input_grad(on["values"], on["indices"], dev_dy, n_in)), host(dx))
    np.testing.assert_array_equal(
        host(tk.linear_weight_grad(on["indices"], dev_x, dev_dy)), host(dvalues))
    same_y, x_columns = tk.linear_forward(on["values"], on["indices"], dev_x, on["bias"],
                                          keep_columns=True)
    np.testing.assert_array_equal(host(same_y), host(y))
    assert host(x_columns).shape == (n_in, batch)
    transposed = tk.transposed_index(on["indices"], n_in)
    again = tk.linear_backward(on["values"], on["indices"], dev_x, dev_dy,
                               transposed=transposed, x_columns=x_columns)
    for a, b in zip(again, (dx, dvalues)):
        np.testing.assert_array_equal(host(a), host(b))
    skipped, only_weights = tk.linear_backward(on["values"], on["indices"], dev_x, dev_dy,
                                               input_grad=False)
    assert skipped is None
    np.testing.assert_array_equal(host(only_weights), host(dvalues))


@pytest.mark.parametrize("lowering", tk.LOWERINGS)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_products_on_the_device_match_the_definition(device, case, dtype, index_dtype,
                                                          lowering):
    name, _ = device
    values, indices, x, dy, bias = _conv_problem(case, dtype, index_dtype, sum(case))
    kh, kw, stride, padding = case[5:9]
    spec = dict(kernel_size=(kh, kw), stride=stride, padding=padding)
    on = on_device(name, values=values, indices=indices, bias=bias, dy=dy)
    dev_x = strided_on_device(x, name)
    y = tk.conv2d_forward(on["values"], on["indices"], dev_x, bias=on["bias"],
                          lowering=lowering, **spec)
    assert_near(host(y), tk.conv2d_forward_reference(values, indices, x, bias=bias, **spec),
                dtype)
    dx, dvalues = tk.conv2d_backward(on["values"], on["indices"], dev_x, on["dy"],
                                     lowering=lowering, **spec)
    assert_near(host(dx), tk.conv2d_input_grad_reference(values, indices, dy, x.shape, **spec),
                dtype)
    assert_near(host(dvalues), tk.conv2d_weight_grad_reference(indices, x, dy, **spec), dtype)
    if lowering == "columns":
        same_y, cols = tk.conv2d_forward(on["values"], on["indices"], dev_x, bias=on["bias"],
                                         lowering=lowering, keep_columns=True, **spec)
        np.testing.assert_array_equal(host(same_y), host(y))
        transposed = tk.transposed_index(on["indices"], x.shape[1] * kh * kw)
        for a, b in zip(tk.conv2d_backward(on["values"], on["indices"], dev_x, on["dy"],
                                           lowering=lowering, x_columns=cols,
                                           transposed=transposed, **spec), (dx, dvalues)):
            np.testing.assert_array_equal(host(a), host(b))


def _shapes(a):
    """An operand as its shape (a tuple of operands as a tuple of shapes)."""
    if isinstance(a, tuple):
        return tuple(_shapes(b) for b in a)
    return tuple(a.shape) if hasattr(a, "shape") else a


def test_each_public_function_runs_its_launches_on_the_column_layout(device, monkeypatch):
    name, _ = device
    calls = []
    for launch in ("_launch_forward", "_launch_input_grad", "_launch_weight_grad"):
        def record(*args, _launch=launch, _inner=getattr(cuda_training, launch)):
            calls.append((_launch, _shapes(args)))
            return _inner(*args)
        monkeypatch.setattr(cuda_training, launch, record)

    def launched(run):
        calls.clear()
        run()
        return list(calls)

    rng = np.random.default_rng(20)
    values, indices = make_layer(rng, 4, 18, 5, np.float32, np.int16)
    x, dy = (rng.standard_normal(shape).astype(np.float32) for shape in ((3, 18), (3, 4)))
    on = on_device(name, values=values, indices=indices, x=x, dy=dy)
    v, i, x, dy = on["values"], on["indices"], on["x"], on["dy"]
    # (values, indices, x_t[n_in, m], bias); (values, transposed: indptr[n_in + 1],
    # rows[nnz], positions[nnz], dy_t[n, m], n_in); (indices, x_t, dy_t)
    forward = ("_launch_forward", ((4, 5), (4, 5), (18, 3), None))
    input_grad = ("_launch_input_grad", ((4, 5), ((19,), (20,), (20,)), (4, 3), 18))
    weight_grad = ("_launch_weight_grad", ((4, 5), (18, 3), (4, 3)))
    assert launched(lambda: tk.linear_forward(v, i, x)) == [forward]
    assert launched(lambda: tk.linear_input_grad(v, i, dy, 18)) == [input_grad]
    assert launched(lambda: tk.linear_weight_grad(i, x, dy)) == [weight_grad]
    assert launched(lambda: tk.linear_backward(v, i, x, dy)) == [weight_grad, input_grad]
    assert launched(lambda: tk.linear_backward(v, i, x, dy, input_grad=False)) == [weight_grad]
    # A 2-channel 3x3 convolution over 2 images of 4x4: n_in 18 taps, 2*2*2 = 8 columns.
    images = to_device(rng.standard_normal((2, 2, 4, 4)).astype(np.float32), name)
    grads = to_device(rng.standard_normal((2, 4, 2, 2)).astype(np.float32), name)
    assert launched(lambda: tk.conv2d_forward(v, i, images, 3)) == [
        ("_launch_forward", ((4, 5), (4, 5), (18, 8), None))]
    assert launched(lambda: tk.conv2d_backward(v, i, images, grads, 3)) == [
        ("_launch_weight_grad", ((4, 5), (18, 8), (4, 8))),
        ("_launch_input_grad", ((4, 5), ((19,), (20,), (20,)), (4, 8), 18))]


def test_the_device_transposed_index_is_the_cpu_one_and_a_stale_one_is_refused(device):
    name, _ = device
    rng = np.random.default_rng(21)
    values, indices = make_layer(rng, 6, 14, 4, np.float64, np.int16)
    dy = rng.standard_normal((3, 6))
    on = on_device(name, values=values, indices=indices, dy=dy)
    for got, want in zip(tk.transposed_index(on["indices"], 14), tk.transposed_index(indices, 14)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(host(got), want)
    stale_host = indices.copy()
    stale_host[0] = (stale_host[0] + 1) % 14
    stale_host.sort(axis=1)
    stale = tk.transposed_index(to_device(stale_host, name), 14)
    with pytest.raises(ValueError, match="transposed does not match indices"):
        tk.linear_input_grad(on["values"], on["indices"], on["dy"], 14, transposed=stale)
    indptr, rows, positions = tk.transposed_index(on["indices"], 14)
    swapped = to_device(host(positions)[::-1].copy(), name)     # right entries, wrong order
    with pytest.raises(ValueError, match="transposed does not match indices"):
        tk.linear_input_grad(on["values"], on["indices"], on["dy"], 14,
                             transposed=(indptr, rows, swapped))
    with pytest.raises(ValueError, match=r"transposed must be transposed_index\(indices, "
                                         r"n_in=15\)"):
        tk.linear_input_grad(on["values"], on["indices"], on["dy"], 15,
                             transposed=(indptr, rows, positions))
    with pytest.raises(TypeError, match="indptr must be a CuPy array"):
        tk.linear_input_grad(on["values"], on["indices"], on["dy"], 14,
                             transposed=tk.transposed_index(indices, 14))
    with pytest.raises(TypeError, match="rows must be int32"):
        tk.linear_input_grad(on["values"], on["indices"], on["dy"], 14,
                             transposed=(indptr, positions, positions))


def test_device_arguments_are_checked_naming_the_argument(device):
    name, _ = device
    rng = np.random.default_rng(22)
    values, indices = make_layer(rng, 4, 10, 3, np.float32, np.int32)
    x = rng.standard_normal((5, 10)).astype(np.float32)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    on = on_device(name, values=values, indices=indices, x=x, dy=dy)
    v, i = on["values"], on["indices"]
    with pytest.raises(TypeError, match="x must be a CuPy array"):
        tk.linear_forward(v, i, x)                              # a host x with device weights
    with pytest.raises(TypeError, match="bias must be a CuPy array"):
        tk.linear_forward(v, i, on["x"], np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="values must be a CuPy array"):
        tk.linear_backward(values, i, on["x"], on["dy"])
    with pytest.raises(TypeError, match="x must be float32 like values"):
        tk.linear_forward(v, i, on["x"].astype(np.float64))
    with pytest.raises(ValueError, match="values must be C-contiguous"):
        tk.linear_forward(to_device(np.ascontiguousarray(values.T), name).T, i, on["x"])
    with pytest.raises(ValueError, match="indices must have shape"):
        tk.linear_forward(v, to_device(indices[:, :2].copy(), name), on["x"])
    bad = indices.copy()
    bad[2, 1] = 10
    with pytest.raises(ValueError, match=r"indices must lie in \[0, n_in=10\)"):
        tk.linear_backward(v, to_device(bad, name), on["x"], on["dy"])
    with pytest.raises(ValueError, match=r"dy must have shape \(any, 4\)"):
        tk.linear_input_grad(v, i, on["dy"][:, :3], 10)
    with pytest.raises(ValueError, match=r"dy must have shape \(5, 4\)"):
        tk.linear_weight_grad(i, on["x"], on["dy"][:4])
    with pytest.raises(ValueError, match="n_in must be an integer >= 0"):
        tk.linear_input_grad(v, i, on["dy"], -1)
    columns = to_device(np.zeros((5, 10), np.float32), name).T    # right shape, strided
    with pytest.raises(ValueError, match="x_columns must be C-contiguous"):
        tk.linear_backward(v, i, on["x"], on["dy"], x_columns=columns)


def test_empty_batches_and_layers_on_the_device(device):
    name, _ = device
    rng = np.random.default_rng(23)
    values, indices = make_layer(rng, 3, 7, 2, np.float64, np.int16)
    on = on_device(name, values=values, indices=indices,
                   x=np.zeros((0, 7)), dy=np.zeros((0, 3)))
    assert host(tk.linear_forward(on["values"], on["indices"], on["x"])).shape == (0, 3)
    dx, dvalues = tk.linear_backward(on["values"], on["indices"], on["x"], on["dy"])
    assert host(dx).shape == (0, 7)
    np.testing.assert_array_equal(host(dvalues), np.zeros((3, 2)))
    no_weights = on_device(name, values=np.zeros((3, 0)), indices=np.zeros((3, 0), np.int16),
                           x=rng.standard_normal((2, 7)), dy=rng.standard_normal((2, 3)),
                           bias=np.arange(3.0))
    y = tk.linear_forward(no_weights["values"], no_weights["indices"], no_weights["x"],
                          no_weights["bias"])
    np.testing.assert_array_equal(host(y), np.tile(np.arange(3.0), (2, 1)))
    dx, dvalues = tk.linear_backward(no_weights["values"], no_weights["indices"],
                                     no_weights["x"], no_weights["dy"])
    np.testing.assert_array_equal(host(dx), np.zeros((2, 7)))
    assert host(dvalues).shape == (3, 0)


# --- on a GPU: the compiled kernels ---------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, n_in, k, batch", [(1, 1, 1, 1), (300, 784, 78, 1),
                                               (96, 200, 20, 256), (64, 4096, 410, 257),
                                               (8, 40, 5, 40000)])   # weight grad segments
def test_cuda_training_kernels_match_the_definitions(cp, n, n_in, k, batch, dtype, index_dtype):
    rng = np.random.default_rng(n + n_in + k + batch)
    values, indices = make_layer(rng, n, n_in, k, dtype, index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    v, i, dev_x, dev_dy, b = (cp.asarray(a) for a in (values, indices, x, dy, bias))
    assert_near(cp.asnumpy(tk.linear_forward(v, i, dev_x, b)),
                tk.linear_forward_reference(values, indices, x, bias), dtype)
    dx, dvalues = tk.linear_backward(v, i, dev_x, dev_dy)
    assert_near(cp.asnumpy(dx), tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)
    assert_near(cp.asnumpy(dvalues), tk.linear_weight_grad_reference(indices, x, dy), dtype)
    # The gather and the segment sums are deterministic: a second run is the same bits.
    for a, b in zip(tk.linear_backward(v, i, dev_x, dev_dy), (dx, dvalues)):
        np.testing.assert_array_equal(cp.asnumpy(a), cp.asnumpy(b))
