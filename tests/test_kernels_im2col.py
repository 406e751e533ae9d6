"""im2col / col2im kernels against a plain-NumPy reference, their adjointness, and the
argument validation at the Python boundary."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from srigl_np.kernels import col2im, conv_output_size, im2col, max_threads, openmp_enabled
from strategies import ConvProblem, conv_problems, seeds


def im2col_reference(x, kh, kw, stride, padding):
    """cols[(b*out_h + oh)*out_w + ow, (c*kh + i)*kw + j] = x_pad[b, c, oh*s + i, ow*s + j]."""
    batch, channels, height, width = x.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    patches = np.empty((batch, out_h, out_w, channels, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
            patches[:, :, :, :, i, j] = tap.transpose(0, 2, 3, 1)
    return patches.reshape(batch * out_h * out_w, channels * kh * kw)


def col2im_reference(cols, x_shape, kh, kw, stride, padding):
    """Scatter-add of every column entry back to its pixel; padding taps are dropped."""
    batch, channels, height, width = x_shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    patches = cols.reshape(batch, out_h, out_w, channels, kh, kw)
    xp = np.zeros((batch, channels, height + 2 * padding, width + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + stride * (out_h - 1) + 1:stride,
               j:j + stride * (out_w - 1) + 1:stride] += patches[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return xp[:, :, padding:padding + height, padding:padding + width]


@given(problem=conv_problems(), seed=seeds)
@example(problem=ConvProblem((1, 1, 1, 1), 1, 1, 1, 0, np.float32), seed=0)
@example(problem=ConvProblem((1, 2, 1, 1), 3, 3, 1, 1, np.float64), seed=0)
@example(problem=ConvProblem((2, 1, 5, 5), 3, 3, 2, 2, np.float32), seed=0)
@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.openmp)])
def test_im2col_and_col2im_match_reference(problem, threads, seed):
    shape, kh, kw, stride, padding, dtype = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    cols = im2col(x, kh, kw, stride=stride, padding=padding, threads=threads)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols, im2col_reference(x, kh, kw, stride, padding))
    c = rng.standard_normal(cols.shape).astype(dtype)
    folded = col2im(c, shape, kh, kw, stride=stride, padding=padding, threads=threads)
    assert folded.dtype == dtype and folded.shape == shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(folded, col2im_reference(c, shape, kh, kw, stride, padding),
                               rtol=rtol, atol=rtol)


@given(problem=conv_problems(dtypes=st.just(np.float64)), seed=seeds)
def test_col2im_is_the_adjoint_of_im2col(problem, seed):
    shape, kh, kw, stride, padding, _ = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = im2col(x, kh, kw, stride=stride, padding=padding)
    c = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, col2im(c, shape, kh, kw, stride=stride, padding=padding))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


def test_im2col_layout_hand_worked():
    x = np.arange(2 * 3 * 3, dtype=np.float64).reshape(1, 2, 3, 3)
    cols = im2col(x, 2, 2)
    assert cols.shape == (4, 8)
    # Output pixel (0, 1): channel 0 taps 1, 2, 4, 5 then channel 1 taps 10, 11, 13, 14.
    np.testing.assert_array_equal(cols[1], [1, 2, 4, 5, 10, 11, 13, 14])


@pytest.mark.openmp
def test_threads_do_not_change_results():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 10, 9)).astype(np.float32)
    c1 = im2col(x, 3, 3, stride=2, padding=1, threads=1)
    np.testing.assert_array_equal(c1, im2col(x, 3, 3, stride=2, padding=1, threads=2))
    np.testing.assert_array_equal(col2im(c1, x.shape, 3, 3, 2, 1, threads=1),
                                  col2im(c1, x.shape, 3, 3, 2, 1, threads=2))


# OpenMP's default raised to 100000 (as threadpoolctl or OMP_NUM_THREADS can), then a
# kernel at threads=0, in a process whose address space cannot hold 100000 thread stacks.
_HUGE_OPENMP_DEFAULT = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
import numpy as np
from threadpoolctl import threadpool_limits
from srigl_np.kernels import im2col
x = np.arange(4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
expected = im2col(x, 3, 3, padding=1, threads=1)
with threadpool_limits(limits=100000):
    assert np.array_equal(im2col(x, 3, 3, padding=1), expected)
print("ok")
"""


@pytest.mark.skipif(not openmp_enabled(), reason="built without OpenMP: no thread pool")
def test_openmps_default_is_held_to_the_kernels_bound():
    """threads=0 runs at most validation.max_thread_count() threads: before, a kernel
    started as many as OpenMP's default said, and 100000 of them crashed the process (or
    crawled for a minute where memory allowed)."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", _HUGE_OPENMP_DEFAULT], timeout=60,
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_im2col_fills_the_given_out_completely():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 6, 5)).astype(np.float32)
    expected = im2col_reference(x, 3, 2, 2, 1)
    out = np.full(expected.shape, np.nan, np.float32)  # every entry, padding too, rewritten
    assert im2col(x, 3, 2, stride=2, padding=1, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_conv_output_size_and_openmp_helpers():
    assert conv_output_size(28, 3, 1, 0) == 26
    assert conv_output_size(7, 3, 2, 1) == 4
    problem = ConvProblem((2, 3, 7, 6), 3, 2, 2, 1, np.float32)
    assert (problem.out_h, problem.out_w) == (conv_output_size(7, 3, 2, 1),
                                              conv_output_size(6, 2, 2, 1))
    assert isinstance(openmp_enabled(), bool)
    assert max_threads() >= 1


@pytest.mark.parametrize("args, error, message", [
    ((28, 3, -1, 0), ValueError, "stride must be >= 1, got -1"),
    ((28, 0, 1, 0), ValueError, "kernel must be >= 1, got 0"),
    ((28, -3, 1, 0), ValueError, "kernel must be >= 1, got -3"),
    ((28, 3, 1, -1), ValueError, "padding must be >= 0, got -1"),
    ((-28, 3, 1, 0), ValueError, "size must be >= 0, got -28"),
    ((2, 3, 1, 0), ValueError, r"kernel \(3\) with padding 0 does not fit input \(2\)"),
    ((28, 3, 2**40, 0), ValueError, "stride must be <= 2147483647"),
    ((2**31 - 2, 3, 1, 1), ValueError, r"size \+ 2\*padding must be <= 2147483647"),
    ((28, 3, True, 0), TypeError, "stride must be an int, got bool"),
    ((28.0, 3, 1, 0), TypeError, "size must be an int, got float"),
])
def test_conv_output_size_refuses_what_has_no_output_size(args, error, message):
    """A negative stride gave a negative size (-24), a huge one an OverflowError."""
    with pytest.raises(error, match=f"^{message}"):
        conv_output_size(*args)


def test_a_stride_of_0_is_a_value_error_not_sigfpe():
    """conv_output_size(28, 3, 0, 0) divided by zero in C: the interpreter died of SIGFPE.
    In a child interpreter, so that the unfixed kernel fails this test, not the run."""
    code = """if True:
        import numpy as np
        from srigl_np import kernels
        for function, arguments in ((kernels.conv_output_size, (28, 3, 0, 0)),
                                    (kernels.im2col_strided, (np.zeros((1, 1, 4, 4)), 3, 3, 0))):
            try:
                function(*arguments)
            except ValueError as exc:
                print(exc)"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stride must be >= 1, got 0\n" * 2


X = np.zeros((2, 3, 5, 5), np.float32)
BUFFER = np.zeros(1000, np.float32)


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: im2col(X.astype(np.int32), 3, 3), TypeError, "float32 or float64"),
    (lambda: im2col(X.astype(np.float16), 3, 3), TypeError, "float32 or float64"),
    (lambda: im2col([[1.0]], 1, 1), TypeError, "numpy array"),
    (lambda: im2col(X[:, :, :, ::2], 1, 1), ValueError, "C-contiguous"),
    (lambda: im2col(X.transpose(0, 1, 3, 2), 3, 3), ValueError, "C-contiguous"),
    (lambda: im2col(X[0], 3, 3), ValueError, "4 dimensions"),
    (lambda: im2col(X, 6, 3), ValueError, "does not fit"),
    (lambda: im2col(X, 0, 3), ValueError, "kernel size"),
    (lambda: im2col(X, 3, 3, stride=0), ValueError, "stride"),
    (lambda: im2col(X, 3, 3, padding=-1), ValueError, "padding"),
    (lambda: im2col(X, 3, 3, threads=-1), ValueError, "threads"),
    # Past the bound libgomp aborts the process; a bool is not a thread count.
    (lambda: im2col(X, 3, 3, threads=10000), ValueError, "threads"),
    (lambda: im2col(X, 3, 3, threads=True), TypeError, "threads"),
    (lambda: im2col(X, 3, 3, threads=2.0), TypeError, "threads"),
    (lambda: col2im(np.zeros((18, 27), np.float32), (2, 3, 5, 5), 3, 3, threads=10000),
     ValueError, "threads"),
    (lambda: col2im(np.zeros((18, 27), np.float32), (2, 3, 5, 5), 3, 3, threads=-1),
     ValueError, "threads"),
    (lambda: col2im(np.zeros((18, 27), np.float32), (2, 3, 5, 5), 3, 3, threads=True),
     TypeError, "threads"),
    (lambda: im2col(X, 3, 3, out=np.zeros((18, 27), np.float64)), TypeError, "out must have x's"),
    (lambda: im2col(X, 3, 3, out=np.zeros((18, 26), np.float32)), ValueError, "out must have shape"),
    (lambda: im2col(X, 3, 3, out=np.zeros((27, 18), np.float32).T), ValueError,
     "out must be C-contiguous"),
    (lambda: im2col(X, 3, 3, out=np.zeros((18, 27), np.float32)[None]), ValueError,
     "out must have 2 dimensions"),
    (lambda: im2col(X, 3, 3, out=_read_only(np.zeros((18, 27), np.float32))), ValueError,
     "writeable"),
    (lambda: im2col(BUFFER[:150].reshape(X.shape), 3, 3, out=BUFFER[100:586].reshape(18, 27)),
     ValueError, "overlap"),
    (lambda: col2im(np.zeros((17, 27), np.float32), (2, 3, 5, 5), 3, 3), ValueError, "shape"),
    (lambda: col2im(np.zeros((18, 27), np.int64), (2, 3, 5, 5), 3, 3), TypeError, "float32"),
    (lambda: col2im(np.zeros((27, 18), np.float32).T, (2, 3, 5, 5), 3, 3), ValueError,
     "C-contiguous"),
    (lambda: col2im(np.zeros((18, 27), np.float32), (2, 3, 5), 3, 3), ValueError, "x_shape"),
    (lambda: col2im(np.zeros((18, 27), np.float32), (2, 0, 5, 5), 3, 3), ValueError, "x_shape"),
    (lambda: col2im(np.zeros((1, 27), np.float32), (2, 3, 2, 2), 3, 3), ValueError, "does not fit"),
])
def test_invalid_arguments_raise(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


@pytest.mark.parametrize("kwargs, message", [
    (dict(kh=2**31, kw=1), "kh must be <= 2147483647"),
    (dict(kh=1, kw=1, padding=2**31), "padding must be <= 2147483647"),
    (dict(kh=1, kw=1, padding=2**30), r"height \+ 2\*padding must be <= 2147483647"),
    (dict(kh=1, kw=1, stride=2**40), "stride must be <= 2147483647"),
])
def test_conv_geometry_near_2_31_is_refused_not_overflowed(kwargs, message):
    from srigl_np import _kernels
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        _kernels.im2col(x, **kwargs)
    with pytest.raises(ValueError, match=message):
        _kernels.col2im(np.zeros((16, 1), np.float32), (1, 1, 4, 4), **kwargs)


# --- max pooling (inference) -------------------------------------------------------------------

@pytest.mark.parametrize("shape, kh, kw, stride", [
    ((2, 3, 24, 24), 2, 2, 2),     # the cnn's pool
    ((1, 1, 5, 7), 3, 2, 2),       # windows that do not tile the image
    ((3, 2, 4, 4), 4, 4, 1),       # one window per plane
    ((1, 1, 1, 1), 1, 1, 1),
    ((2, 2, 9, 6), 2, 3, 3),
])
def test_max_pool2d_matches_the_layer(shape, kh, kw, stride):
    from srigl_np.kernels import max_pool2d
    from srigl_np.nn.pooling import MaxPool2d

    x = np.random.default_rng(sum(shape)).standard_normal((2 * shape[0],) + shape[1:])
    x = x.astype(np.float32)[::2]   # not contiguous
    expected = MaxPool2d((kh, kw), stride).forward(np.ascontiguousarray(x), training=False)
    for threads in (1, 2):
        np.testing.assert_array_equal(max_pool2d(x, kh, kw, stride, threads), expected)


def test_max_pool2d_propagates_nan_like_numpy_and_refuses_bad_input():
    from srigl_np.kernels import max_pool2d

    x = np.zeros((1, 1, 2, 4), dtype=np.float32)
    x[0, 0, 1, 0] = np.nan
    np.testing.assert_array_equal(max_pool2d(x, 2, 2, 2, 1), [[[[np.nan, 0.0]]]])
    with pytest.raises(ValueError, match="4-D"):
        max_pool2d(x[0], 2, 2, 2)
    with pytest.raises(TypeError, match="floating-point"):
        max_pool2d(np.zeros((1, 1, 2, 4), dtype=np.int32), 2, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        max_pool2d(x, 3, 3, 1)
    with pytest.raises(ValueError, match="stride"):
        max_pool2d(x, 2, 2, 0)
