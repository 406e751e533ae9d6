"""The condensed training products and optimizer steps (srigl_np.training_kernels) against
their NumPy definitions and against the dense masked computation, with W the dense
[n, n_in] array holding values at indices and zeros elsewhere:

    y = x W^T + b,   dx = dy W,   dvalues = (dy^T x) read at the stored positions.

float64 agrees to 1e-12 and float32 to 1e-5 (relative to the largest entry); int16 and
int32 indices; threads 1 and 2; edge shapes (k = 1, one neuron, batch 1, a dense row);
non-contiguous activations (copied) and parameters (refused); finite differences in
float64; the optimizer steps against nn.optim's dense steps on masked weights.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fake_cupy
from gradcheck import assert_close, numeric_grad
from srigl_np import training_kernels as tk
from srigl_np.nn.optim import SGD, AdamW

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
device = fake_cupy.device    # the fixture: fake CuPy, and real CuPy where a GPU is


def make_layer(rng, n, n_in, k, dtype=np.float64, index_dtype=np.int32):
    """values[n, k] standard normal and indices[n, k]: k distinct inputs per row, sorted."""
    indices = np.sort(np.argsort(rng.random((n, n_in)), axis=1)[:, :k], axis=1)
    return rng.standard_normal((n, k)).astype(dtype), indices.astype(index_dtype)


def dense(values, indices, n_in):
    """The dense W[n, n_in] of a condensed layer (float64, zeros off the mask)."""
    w = np.zeros((values.shape[0], n_in))
    np.put_along_axis(w, indices.astype(np.int64), values.astype(np.float64), axis=1)
    return w


def at_mask(matrix, indices):
    return np.take_along_axis(matrix, indices.astype(np.int64), axis=1)


def assert_near(got, want, dtype):
    tol = TOLERANCE[dtype]
    assert got.dtype == dtype and got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# -- Linear ---------------------------------------------------------------------------------

# (n, n_in, k, batch): a general case; one neuron; k = 1; a dense row (k = n_in); batch 1;
# sizes past the kernels' vector blocks (batch 130 leaves a remainder; 2 threads split it).
LINEAR_SHAPES = [(5, 12, 3, 7), (1, 10, 4, 3), (6, 9, 1, 5), (4, 8, 8, 6), (3, 10, 2, 1),
                 (17, 300, 30, 130), (9, 40, 7, 64)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, n_in, k, batch", LINEAR_SHAPES)
def test_linear_products_match_the_definition_and_the_dense_layer(n, n_in, k, batch, dtype,
                                                                  index_dtype, threads):
    rng = np.random.default_rng(n * 1000 + n_in + k + batch)
    values, indices = make_layer(rng, n, n_in, k, dtype, index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    w = dense(values, indices, n_in)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)

    y = tk.linear_forward(values, indices, x, bias, threads=threads)
    assert_near(y, tk.linear_forward_reference(values, indices, x, bias), dtype)
    assert_near(y, (x64 @ w.T + bias).astype(dtype), dtype)

    dx, dvalues = tk.linear_backward(values, indices, x, dy, threads=threads)
    assert_near(dx, tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)
    assert_near(dx, (dy64 @ w).astype(dtype), dtype)
    assert_near(dvalues, tk.linear_weight_grad_reference(indices, x, dy), dtype)
    assert_near(dvalues, at_mask(dy64.T @ x64, indices).astype(dtype), dtype)

    # The single products are the same kernels; the gather sums in the scatter's order.
    np.testing.assert_array_equal(tk.linear_input_grad(values, indices, dy, n_in, threads), dx)
    transposed = tk.transposed_index(indices, n_in)
    np.testing.assert_array_equal(
        tk.linear_input_grad(values, indices, dy, n_in, threads, transposed), dx)
    np.testing.assert_array_equal(tk.linear_weight_grad(indices, x, dy, threads), dvalues)
    same_y, x_columns = tk.linear_forward(values, indices, x, bias, threads, keep_columns=True)
    np.testing.assert_array_equal(same_y, y)
    for a, b in zip(tk.linear_backward(values, indices, x, dy, threads, x_columns=x_columns),
                    (dx, dvalues)):
        np.testing.assert_array_equal(a, b)
    skipped, only_weights = tk.linear_backward(values, indices, x, dy, threads, input_grad=False)
    assert skipped is None
    np.testing.assert_array_equal(only_weights, dvalues)


@given(n=st.integers(1, 12), n_in=st.integers(1, 70), k_fraction=st.floats(0, 1),
       batch=st.integers(1, 140), dtype=st.sampled_from([np.float32, np.float64]),
       index_dtype=st.sampled_from([np.int16, np.int32]), seed=st.integers(0, 2**32 - 1))
def test_linear_products_on_drawn_shapes(n, n_in, k_fraction, batch, dtype, index_dtype, seed):
    rng = np.random.default_rng(seed)
    k = 1 + int(k_fraction * (n_in - 1))
    values, indices = make_layer(rng, n, n_in, k, dtype, index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    w = dense(values, indices, n_in)
    assert_near(tk.linear_forward(values, indices, x, threads=1),
                (x.astype(np.float64) @ w.T).astype(dtype), dtype)
    dx, dvalues = tk.linear_backward(values, indices, x, dy, threads=1)
    assert_near(dx, (dy.astype(np.float64) @ w).astype(dtype), dtype)
    assert_near(dvalues, at_mask(dy.T.astype(np.float64) @ x, indices).astype(dtype), dtype)


@pytest.mark.openmp
def test_the_thread_count_does_not_change_a_result():
    """Each output element is summed in one fixed order whatever the thread count (the
    weight gradient's column segments depend on n_in and the dtype only)."""
    rng = np.random.default_rng(3)
    values, indices = make_layer(rng, 33, 200, 20, np.float32, np.int16)
    x = rng.standard_normal((1100, 200)).astype(np.float32)    # several column segments
    dy = rng.standard_normal((1100, 33)).astype(np.float32)
    one = tk.linear_forward(values, indices, x, threads=1), *tk.linear_backward(
        values, indices, x, dy, threads=1)
    two = tk.linear_forward(values, indices, x, threads=2), *tk.linear_backward(
        values, indices, x, dy, threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, n_in, k, batch", [(13, 200, 21, 130), (9, 40, 8, 64),
                                               (5, 30, 3, 7), (4, 300, 57, 256)])
def test_both_vector_copies_match_the_definition_for_any_thread_count(n, n_in, k, batch,
                                                                      dtype, wide):
    """The 32-byte and (on an AVX-512 CPU) 64-byte copies of the Linear kernels: k not a
    multiple of the SDDMM's eight-weight groups, batches with vector and scalar tails, the
    gather and the scatter; threads 1 and 2 give the same bits."""
    rng = np.random.default_rng(n + n_in + k + batch)
    values, indices = make_layer(rng, n, n_in, k, dtype, np.int16)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    transposed = tk.transposed_index(indices, n_in)
    previous = tk._compiled._use_wide(wide)
    try:
        results = [(tk.linear_forward(values, indices, x, threads=threads),
                    *tk.linear_backward(values, indices, x, dy, threads=threads,
                                        transposed=transposed),
                    tk.linear_input_grad(values, indices, dy, n_in, threads=threads))
                   for threads in (1, 2)]
    finally:
        tk._compiled._use_wide(previous)
    y, dx, dvalues, dx_scatter = results[0]
    assert_near(y, tk.linear_forward_reference(values, indices, x), dtype)
    assert_near(dx, tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)
    assert_near(dvalues, tk.linear_weight_grad_reference(indices, x, dy), dtype)
    assert_near(dx_scatter, dx, dtype)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (8, 8), (16, 16), (17, 33), (33, 130),
                                   (128, 300), (300, 5), (40, 2048)])
def test_transpose_moves_every_element(shape, dtype, threads):
    """The column layout's transpose (16 x 16 blocks of 8 x 8 register tiles, scalar
    edges): padded and plain, rows contiguous or strided (copied first)."""
    a = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    for source in (a, a[:, ::2]):
        for padded in (True, False):
            at = tk._compiled.transpose(source, threads, padded=padded)
            assert at.shape == source.T.shape and at.strides[1] == at.itemsize
            np.testing.assert_array_equal(at, source.T)


def test_strided_activations_are_copied_and_give_the_same_result():
    rng = np.random.default_rng(4)
    values, indices = make_layer(rng, 6, 15, 4)
    wide = rng.standard_normal((8, 30))
    x = wide[:, ::2]                                          # every other column
    dy = np.asfortranarray(rng.standard_normal((8, 6)))      # column-major
    bias = rng.standard_normal(12)[::2]
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    np.testing.assert_array_equal(tk.linear_forward(values, indices, x, bias),
                                  tk.linear_forward(values, indices, xc, bias.copy()))
    for a, b in zip(tk.linear_backward(values, indices, x, dy),
                    tk.linear_backward(values, indices, xc, dyc)):
        np.testing.assert_array_equal(a, b)


def test_finite_differences_of_a_tiny_linear_layer():
    rng = np.random.default_rng(5)
    values, indices = make_layer(rng, 3, 7, 3)
    x = rng.standard_normal((4, 7))
    bias = rng.standard_normal(3)
    r = rng.standard_normal((4, 3))

    def loss():
        return float(np.sum(tk.linear_forward(values, indices, x, bias, threads=1) * r))

    dx, dvalues = tk.linear_backward(values, indices, x, r, threads=1)
    assert_close("values", dvalues, numeric_grad(loss, values))
    assert_close("x", dx, numeric_grad(loss, x))


# -- Conv2d ---------------------------------------------------------------------------------

# (batch, channels, height, width, n, kh, kw, stride, padding, k)
CONV_CASES = [(2, 3, 7, 6, 4, 3, 3, 1, 0, 5), (1, 2, 6, 6, 1, 3, 2, 2, 1, 1),
              (3, 1, 5, 5, 5, 2, 2, 1, 1, 4), (2, 4, 9, 8, 6, 3, 3, 2, 2, 36),
              (2, 2, 12, 12, 3, 3, 3, 1, 1, 7),
              (4, 2, 20, 20, 5, 3, 3, 1, 1, 6),    # 1600 columns: padded rows
              (2, 2, 6, 40, 3, 3, 3, 1, 1, 7)]     # rows of 40: two vector chunks


def _conv_problem(case, dtype, index_dtype, seed):
    batch, channels, height, width, n, kh, kw, stride, padding, k = case
    rng = np.random.default_rng(seed)
    values, indices = make_layer(rng, n, channels * kh * kw, k, dtype, index_dtype)
    x = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    dy = rng.standard_normal((batch, n, out_h, out_w)).astype(dtype)
    return values, indices, x, dy, rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_direct_conv_products_match_the_definition(case, dtype, index_dtype, threads):
    values, indices, x, dy, bias = _conv_problem(case, dtype, index_dtype, sum(case))
    kh, kw, stride, padding = case[5:9]
    geometry = dict(kernel_size=(kh, kw), stride=stride, padding=padding, threads=threads)
    assert_near(tk.conv2d_forward(values, indices, x, bias=bias, **geometry),
                tk.conv2d_forward_reference(values, indices, x, (kh, kw), stride, padding, bias),
                dtype)
    dx, dvalues = tk.conv2d_backward(values, indices, x, dy, **geometry)
    assert_near(dx, tk.conv2d_input_grad_reference(values, indices, dy, x.shape, (kh, kw),
                                                   stride, padding), dtype)
    assert_near(dvalues, tk.conv2d_weight_grad_reference(indices, x, dy, (kh, kw), stride,
                                                         padding), dtype)
    skipped, only_weights = tk.conv2d_backward(values, indices, x, dy, input_grad=False,
                                               **geometry)
    assert skipped is None
    np.testing.assert_array_equal(only_weights, dvalues)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_column_conv_products_match_the_definition(case, dtype, index_dtype, threads):
    values, indices, x, dy, bias = _conv_problem(case, dtype, index_dtype, sum(case))
    kh, kw, stride, padding = case[5:9]
    geometry = dict(kernel_size=(kh, kw), stride=stride, padding=padding, lowering="columns")
    y = tk.conv2d_forward(values, indices, x, bias=bias, threads=threads, **geometry)
    spec = dict(kernel_size=(kh, kw), stride=stride, padding=padding)
    assert_near(y, tk.conv2d_forward_reference(values, indices, x, bias=bias, **spec), dtype)
    dx, dvalues = tk.conv2d_backward(values, indices, x, dy, threads=threads, **geometry)
    assert_near(dx, tk.conv2d_input_grad_reference(values, indices, dy, x.shape, **spec),
                dtype)
    assert_near(dvalues, tk.conv2d_weight_grad_reference(indices, x, dy, **spec), dtype)
    transposed = tk.transposed_index(indices, x.shape[1] * kh * kw)
    same_y, cols = tk.conv2d_forward(values, indices, x, bias=bias, threads=threads,
                                     keep_columns=True, **geometry)
    np.testing.assert_array_equal(same_y, y)
    gathered, kept = tk.conv2d_backward(values, indices, x, dy, threads=threads,
                                        transposed=transposed, x_columns=cols, **geometry)
    np.testing.assert_array_equal(gathered, dx)
    np.testing.assert_array_equal(kept, dvalues)


@pytest.mark.parametrize("lowering", tk.LOWERINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_products_match_torchs_dense_masked_convolution(case, dtype, lowering):
    torch = pytest.importorskip("torch")
    values, indices, x, dy, bias = _conv_problem(case, dtype, np.int32, 7 + sum(case))
    channels, kh, kw, stride, padding = case[1], case[5], case[6], case[7], case[8]
    w = dense(values, indices, channels * kh * kw)
    weight = torch.tensor(w.reshape(-1, channels, kh, kw), requires_grad=True)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = torch.nn.functional.conv2d(xt, weight, torch.tensor(bias.astype(np.float64)),
                                   stride=stride, padding=padding)
    y.backward(torch.tensor(dy.astype(np.float64)))
    geometry = dict(kernel_size=(kh, kw), stride=stride, padding=padding, lowering=lowering)
    assert_near(tk.conv2d_forward(values, indices, x, bias=bias, **geometry),
                y.detach().numpy().astype(dtype), dtype)
    dx, dvalues = tk.conv2d_backward(values, indices, x, dy, **geometry)
    assert_near(dx, xt.grad.numpy().astype(dtype), dtype)
    dense_grad = weight.grad.numpy().reshape(w.shape)
    assert_near(dvalues, at_mask(dense_grad, indices).astype(dtype), dtype)


def test_finite_differences_of_a_tiny_conv_layer():
    values, indices, x, _, bias = _conv_problem((2, 2, 5, 4, 3, 3, 2, 2, 1, 4), np.float64,
                                                np.int16, 11)
    geometry = dict(kernel_size=(3, 2), stride=2, padding=1, threads=1)
    r = np.random.default_rng(12).standard_normal(
        tk.conv2d_forward(values, indices, x, **geometry).shape)

    def loss():
        return float(np.sum(tk.conv2d_forward(values, indices, x, bias=bias, **geometry) * r))

    dx, dvalues = tk.conv2d_backward(values, indices, x, r, **geometry)
    assert_close("values", dvalues, numeric_grad(loss, values))
    assert_close("x", dx, numeric_grad(loss, x))


@pytest.mark.parametrize("lowering", tk.LOWERINGS)
def test_strided_images_are_copied(lowering):
    values, indices, x, dy, _ = _conv_problem((2, 3, 7, 6, 4, 3, 3, 1, 0, 5), np.float64,
                                              np.int32, 13)
    strided_x = np.concatenate([x, x], axis=3)[:, :, :, ::2]
    strided_x[...] = x
    strided_dy = np.asfortranarray(dy)
    assert not strided_x.flags.c_contiguous and not strided_dy.flags.c_contiguous
    for a, b in zip(tk.conv2d_backward(values, indices, strided_x, strided_dy, 3,
                                       lowering=lowering),
                    tk.conv2d_backward(values, indices, x, dy, 3, lowering=lowering)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(tk.conv2d_forward(values, indices, strided_x, 3,
                                                    lowering=lowering),
                                  tk.conv2d_forward(values, indices, x, 3, lowering=lowering))


# -- the boundary ---------------------------------------------------------------------------

def _arrays():
    rng = np.random.default_rng(14)
    values, indices = make_layer(rng, 4, 10, 3)
    return values, indices, rng.standard_normal((5, 10)), rng.standard_normal((5, 4))


@pytest.mark.parametrize("change, error, message", [
    (lambda v, i, x, dy: (v.astype(np.float16), i, x, dy), TypeError, "values must be"),
    (lambda v, i, x, dy: (v, i.astype(np.int64), x, dy), TypeError, "indices must be"),
    (lambda v, i, x, dy: (v, i.astype(np.float64), x, dy), TypeError, "indices must be"),
    (lambda v, i, x, dy: (v, i, x.astype(np.float32), dy), TypeError,
     "x must be float64 like values"),
    (lambda v, i, x, dy: (v, i, x, dy.astype(np.float32)), TypeError,
     "dy must be float64 like values"),
    (lambda v, i, x, dy: (v, i[:, :2].copy(), x, dy), ValueError, "indices must have shape"),
    (lambda v, i, x, dy: (np.asfortranarray(v), i, x, dy), ValueError,
     "values must be C-contiguous"),
    (lambda v, i, x, dy: (v, np.where(i == i.max(), 10, i).astype(i.dtype), x, dy),
     ValueError, r"indices must lie in \[0, n_in=10\)"),
    (lambda v, i, x, dy: (v, np.where(i == i.min(), -1, i).astype(i.dtype), x, dy),
     ValueError, r"indices must lie in \[0, n_in=10\)"),
    (lambda v, i, x, dy: (v, i, x[0], dy), ValueError, "x must have 2 dimensions"),
    (lambda v, i, x, dy: (v, i, x, dy[:, :3]), ValueError, "dy must have shape"),
])
def test_bad_arguments_are_refused_naming_the_argument(change, error, message):
    values, indices, x, dy = change(*_arrays())
    with pytest.raises(error, match=message):
        tk.linear_backward(values, indices, x, dy)


def test_kept_columns_of_another_shape_are_refused():
    values, indices, x, dy = _arrays()
    with pytest.raises(ValueError, match=r"x_columns must have shape \(10, 5\)"):
        tk.linear_backward(values, indices, x, dy, x_columns=np.zeros((5, 10)))


@pytest.mark.parametrize("threads, error", [(-1, ValueError), (10**6, ValueError),
                                            (True, TypeError), (1.5, TypeError)])
def test_bad_thread_counts_are_refused(threads, error):
    values, indices, x, _ = _arrays()
    with pytest.raises(error, match="threads must"):
        tk.linear_forward(values, indices, x, threads=threads)


def test_the_index_range_is_checked_against_the_filter_taps():
    values, indices, x, _, _ = _conv_problem((1, 2, 5, 5, 3, 2, 2, 1, 0, 3), np.float64,
                                             np.int32, 15)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, n_in=4\)"):
        tk.conv2d_forward(values, indices, x[:, :1], 2)   # one channel: 4 taps
    with pytest.raises(ValueError, match="dy must have shape"):
        tk.conv2d_backward(values, indices, x, np.zeros((1, 3, 3, 3)), 2)
    with pytest.raises(ValueError, match="lowering must be one of"):
        tk.conv2d_forward(values, indices, x, 2, lowering="fft")
    with pytest.raises(ValueError, match="x_columns is for lowering='columns'"):
        tk.conv2d_backward(values, indices, x, np.zeros((1, 3, 4, 4)), 2,
                           x_columns=np.zeros((8, 16)))


def test_check_topology():
    indices = np.array([[0, 3, 5], [1, 2, 4]], dtype=np.int16)
    assert tk.check_topology(indices, 6) is indices
    with pytest.raises(ValueError, match="distinct within each row"):
        tk.check_topology(np.array([[0, 3, 0]], dtype=np.int32), 6)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, n_in=5\)"):
        tk.check_topology(indices, 5)
    with pytest.raises(TypeError, match="int32 for n_in=40000"):
        tk.check_topology(indices, 40000)


# -- optimizer steps --------------------------------------------------------------------------

def _optimizer_run(kind, options, dtype):
    """Five steps of nn.optim's dense optimizer on a masked weight and of the condensed
    step on its stored values, from the same gradients; returns both trajectories."""
    rng = np.random.default_rng(16)
    values, indices = make_layer(rng, 6, 11, 4, dtype)
    weight = dense(values, indices, 11).astype(dtype)
    optimizer = (SGD if kind == "sgd" else AdamW)({"w": weight}, **options)
    keys = ("momentum_buffer",) if kind == "sgd" and options.get("momentum") else \
        (("exp_avg", "exp_avg_sq") if kind == "adamw" else ())
    state = {key: np.zeros_like(values) for key in keys}
    for step in range(1, 6):
        grad = rng.standard_normal(weight.shape).astype(dtype)
        grad *= weight != 0                         # the masked gradient
        optimizer.step({"w": grad})
        stored = at_mask(grad, indices)
        if kind == "sgd":
            tk.sgd_step(values, stored, state.get("momentum_buffer"), **options)
        else:
            tk.adamw_step(values, stored, state["exp_avg"], state["exp_avg_sq"], step=step,
                          **options)
        yield weight, values, indices, optimizer.state["w"], state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, options", [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
])
def test_optimizer_steps_follow_the_dense_masked_steps(kind, options, dtype):
    """Same operations in the same order: the stored entries agree bit for bit, and the
    dense weight stays zero off the mask."""
    for weight, values, indices, dense_state, state in _optimizer_run(kind, options, dtype):
        np.testing.assert_array_equal(values, at_mask(weight, indices))
        assert np.count_nonzero(weight) == values.size
        for key, buffer in state.items():
            np.testing.assert_array_equal(buffer, at_mask(dense_state[key], indices))


def test_optimizer_steps_check_their_arguments():
    values = np.ones((2, 3))
    with pytest.raises(ValueError, match="momentum_buffer is required"):
        tk.sgd_step(values, values.copy(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        tk.sgd_step(values, values.copy(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="grad must have values' shape"):
        tk.sgd_step(values, np.ones((2, 2)), lr=0.1)
    with pytest.raises(TypeError, match="grad must be float64 like values"):
        tk.sgd_step(values, np.ones((2, 3), np.float32), lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        tk.adamw_step(values, values.copy(), values.copy(), values.copy(), step=1, lr=-1.0)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        tk.adamw_step(values, values.copy(), values.copy(), values.copy(), step=0, lr=0.1)
    scratch = np.empty_like(values)
    tk.sgd_step(values, np.ones_like(values), lr=0.5, scratch=scratch)
    np.testing.assert_array_equal(values, np.full((2, 3), 0.5))


def test_the_compiled_entry_points_check_what_memory_safety_needs():
    """The Cython defs are safe on their own: no index outside xt, no row count mismatch,
    no dtype mix reaches the nogil loops."""
    from srigl_np import _training_kernels as compiled

    values = np.ones((3, 2))
    indices = np.array([[0, 5], [1, 2], [3, 4]], dtype=np.int32)
    xt = np.zeros((6, 4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, n_in=5\)"):
        compiled.forward_columns(values, indices, xt[:5].copy())
    with pytest.raises(TypeError, match="xt must be float64 like values"):
        compiled.forward_columns(values, indices, xt.astype(np.float32))
    with pytest.raises(ValueError, match="dyt must have 3 rows"):
        compiled.input_grad_columns(values, indices, np.zeros((2, 4)), 6)
    with pytest.raises(ValueError, match="dyt must have shape"):
        compiled.weight_grad_columns(indices, xt, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="cols must have shape"):
        compiled.col2im_columns(np.zeros((4, 8)), (1, 1, 4, 4), 2, 2)


def test_padded_column_rows_avoid_4k_multiples():
    from srigl_np import _training_kernels as compiled

    for m, itemsize in ((128, 4), (1024, 4), (73728, 4), (1600, 8), (7, 8)):
        ld = compiled.leading_dimension(m, itemsize)
        assert ld >= m and (ld * itemsize) % 64 == 0
        if ld * itemsize >= 4096:
            assert (ld * itemsize) % 4096 == 64
    a = np.arange(3 * 1500, dtype=np.float32).reshape(3, 1500)
    at = compiled.transpose(compiled.transpose(a))       # padded view, then back
    assert at.strides[0] > at.shape[1] * 4 or at.shape[1] * 4 < 4096
    np.testing.assert_array_equal(at, a)


def test_a_stale_transposed_index_is_refused():
    rng = np.random.default_rng(18)
    values, indices = make_layer(rng, 5, 12, 3)
    dy = rng.standard_normal((4, 5))
    stale = tk.transposed_index(indices, 12)
    indices[0] = (indices[0] + 1) % 12                       # the topology changed
    indices.sort(axis=1)
    with pytest.raises(ValueError, match="transposed does not match indices"):
        tk.linear_input_grad(values, indices, dy, 12, transposed=stale)
    with pytest.raises(ValueError, match="transposed must be transposed_index"):
        tk.linear_input_grad(values, indices, dy, 13, transposed=stale)
    fresh = tk.transposed_index(indices, 12)
    np.testing.assert_array_equal(tk.linear_input_grad(values, indices, dy, 12, transposed=fresh),
                                  tk.linear_input_grad(values, indices, dy, 12))


def test_device_arrays_take_the_definitions(device):
    """CuPy arrays (here the fake CuPy of tests/fake_cupy.py, whose launches are the
    NumPy definitions, or a real GPU) run the CUDA override on the device, with no host
    array mixed in (tests/test_cuda_training.py has the full matrix)."""
    from srigl_np.backend import is_cupy_array, to_device, to_numpy

    name, _ = device
    rng = np.random.default_rng(19)
    values, indices = make_layer(rng, 4, 18, 5)
    x = rng.standard_normal((3, 2, 4, 4))
    dy = rng.standard_normal((3, 4, 2, 2))
    on = {key: to_device(a, name) for key, a in
          dict(values=values, indices=indices, x=x, dy=dy).items()}
    y = tk.conv2d_forward(on["values"], on["indices"], on["x"], 3)
    dx, dvalues = tk.conv2d_backward(on["values"], on["indices"], on["x"], on["dy"], 3)
    assert all(is_cupy_array(a) for a in (y, dx, dvalues))
    np.testing.assert_allclose(to_numpy(y), tk.conv2d_forward(values, indices, x, 3),
                               rtol=1e-12, atol=1e-12)
    for got, want in zip((dx, dvalues), tk.conv2d_backward(values, indices, x, dy, 3)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12, atol=1e-12)
    rows = x.reshape(3, 32)[:, :18].copy()
    y_rows = tk.linear_forward(on["values"], on["indices"], to_device(rows, name))
    np.testing.assert_allclose(to_numpy(y_rows), tk.linear_forward(values, indices, rows),
                               rtol=1e-12, atol=1e-12)
    grad, buffer = on["values"] * 0.5, on["values"] * 0.0
    tk.sgd_step(on["values"], grad, buffer, lr=0.1, momentum=0.9)
    tk.sgd_step(values, values * 0.5, np.zeros_like(values), lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(to_numpy(on["values"]), values)
