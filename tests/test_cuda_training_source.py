"""The CUDA source of the training products (srigl_np/_training.cu), checked without a GPU.

1. nvcc compiles every kernel instantiation that ``cuda_training`` names (syntax, types,
   and ptxas's device code generation), warnings as errors; skipped without nvcc.
2. The kernels run as C++ on the CPU (tests/cuda_emulation.py: every (block, thread) in
   turn) against the NumPy definitions, float32/float64 x int16/int32, on random and edge
   shapes; the operands sit between NaN guards, so a read outside an input makes a NaN in
   the result and a write outside an output spoils a guard, and the outputs start as NaN,
   so an element no thread writes stays NaN. Grids smaller than the rows exercise the
   grid-stride loops that CUDA's 65535 limit on gridDim.y needs.
3. The real launch functions (grid shapes, argument packing, segment sums, empty shapes)
   run through the public functions on the fake CuPy, whose ``RawModule`` is the emulator.

Skipped without g++. None of this is a GPU run: timing, coalescing and nvrtc (CuPy's
compiler) are not checked here; tests/test_cuda_training.py's gpu tests are.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

import cuda_emulation
import fake_cupy
from srigl_np import cuda_training
from srigl_np import training_kernels as tk
from srigl_np.backend import to_device, to_numpy
from test_training_kernels import CONV_CASES, LINEAR_SHAPES, _conv_problem, assert_near, make_layer

DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int16, np.int32]
GUARD = 64
CTYPE = {np.float32: "float", np.float64: "double", np.int16: "short", np.int32: "int"}
# The shapes of test_training_kernels and a few more: a column axis past one block of 32
# (m 33), past the weight gradient's segment length (m 700), n_in 1, many rows.
SHAPES = LINEAR_SHAPES + [(1, 1, 1, 1), (2, 5, 5, 33), (40, 64, 3, 2), (3, 20, 4, 700)]


@pytest.fixture(scope="module")
def module():
    if not cuda_emulation.compiler_available():
        pytest.skip(cuda_emulation.NO_COMPILER)
    with open(cuda_training._KERNEL_FILE) as f:
        return cuda_emulation.EmulatedModule(f.read(), name_expressions=
                                             cuda_training.NAME_EXPRESSIONS)


def test_nvcc_compiles_every_instantiation(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc (the CUDA toolkit) to compile the kernel source")
    instances = ", ".join(f"(void*)&{name}" for name in cuda_training.NAME_EXPRESSIONS)
    source = tmp_path / "instances.cu"
    source.write_text(f'#include "{cuda_training._KERNEL_FILE}"\n'
                      f"void* instances[] = {{{instances}}};\n")
    result = subprocess.run(["nvcc", "-std=c++14", "-c", str(source), "-o",
                             str(tmp_path / "instances.o"), "-Werror", "all-warnings"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(cuda_training.NAME_EXPRESSIONS) == 10   # 2 kernels x 2 x 2, the gather x 2


def guarded(a, fill=np.nan):
    """(a's values in the middle of a NaN-guarded buffer, the buffer)."""
    buffer = np.full(a.size + 2 * GUARD, fill, dtype=a.dtype)
    inner = buffer[GUARD:GUARD + a.size].reshape(a.shape)
    inner[...] = a
    return inner, buffer


def output(shape, dtype):
    """A guarded output that starts as NaN: every element must be written, nothing else."""
    return guarded(np.full(shape, np.nan, dtype=dtype))


def assert_written_inside(out, buffer):
    assert not np.isnan(out).any(), "an output element no thread wrote (or a guard read)"
    assert np.isnan(buffer[:GUARD]).all() and np.isnan(buffer[-GUARD:]).all(), \
        "a write outside the output"


def _layer(shape, dtype, index_dtype):
    n, n_in, k, batch = shape
    rng = np.random.default_rng(n * 7 + n_in * 3 + k + batch)
    values, indices = make_layer(rng, n, n_in, k, dtype, index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    return values, indices, x, dy, rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_emulated_kernels_match_the_definitions(module, shape, dtype, index_dtype):
    n, n_in, k, m = shape
    values, indices, x, dy, bias = _layer(shape, dtype, index_dtype)
    types = f"{CTYPE[dtype]}, {CTYPE[index_dtype]}"
    v, _ = guarded(values)
    x_t, _ = guarded(np.ascontiguousarray(x.T))
    dy_t, _ = guarded(np.ascontiguousarray(dy.T))
    b, _ = guarded(bias)

    # The launch shape, and one row of blocks only: the row loop strides by the grid.
    for grid, block in (cuda_training.row_launch_shape(n, m),
                        ((cuda_training.row_launch_shape(n, m)[0][0], 1), (32, 2))):
        y_t, y_buffer = output((n, m), dtype)
        module.get_function(f"forward_columns<{types}>")(
            grid, block, (v, indices, x_t, b, y_t, np.int32(n), np.int32(k), np.int64(m)))
        assert_written_inside(y_t, y_buffer)
        assert_near(y_t.T, tk.linear_forward_reference(values, indices, x, bias), dtype)

    indptr, rows, positions = tk.transposed_index(indices, n_in)
    for grid, block in (cuda_training.row_launch_shape(n_in, m), ((-(-m // 4), 1), (4, 3))):
        dx_t, dx_buffer = output((n_in, m), dtype)
        module.get_function(f"input_grad_gather<{CTYPE[dtype]}>")(
            grid, block, (v, indptr, rows, positions, dy_t, dx_t, np.int32(n_in), np.int64(m)))
        assert_written_inside(dx_t, dx_buffer)
        assert_near(dx_t.T, tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)

    want = tk.linear_weight_grad_reference(indices, x, dy)
    nnz = n * k
    # The launch's split; segments of 7 columns (the last one shorter) with a grid of 2
    # segment rows looping over the rest; one segment of every column.
    splits = [cuda_training.weight_grad_split(nnz, m), (-(-m // 7), 7), (1, m)]
    for (segments, segment), grid_y in zip(splits, (None, 2, 1)):
        grid = (-(-nnz // cuda_training.BLOCK_THREADS), grid_y or segments)
        partial, p_buffer = output((segments, nnz), dtype)
        module.get_function(f"weight_grad_columns<{types}>")(
            grid, (cuda_training.BLOCK_THREADS, 1),
            (indices, x_t, dy_t, partial, np.int64(nnz), np.int32(k), np.int64(m),
             np.int64(segment)))
        assert_written_inside(partial, p_buffer)
        assert_near(partial.sum(axis=0).reshape(n, k), want, dtype)


def test_launch_shapes_cover_their_outputs_within_cudas_limits():
    for n_rows, m in ((1, 1), (3, 2), (300, 1), (70000 * 8, 5), (10, 33), (1, 10**6)):
        (gx, gy), (bx, by) = cuda_training.row_launch_shape(n_rows, m)
        assert bx * by == cuda_training.BLOCK_THREADS and gx * bx >= m and gy <= 65535
        assert gy * by >= n_rows or gy == 65535      # beyond: the row loop strides
        assert (gx - 1) * bx < m                      # no block wholly past the columns
    for nnz, m in ((1, 1), (5, 100), (5, 10**6), (8, 1000), (10**6, 10**5), (1, 10**9)):
        segments, segment = cuda_training.weight_grad_split(nnz, m)
        assert 1 <= segments <= 65535 and (segments - 1) * segment < m <= segments * segment
        assert segments == 1 or segment >= cuda_training.MIN_SEGMENT


def install_emulated_cupy(monkeypatch):
    """The fake CuPy whose RawModule is the emulator: the real launches, run on the CPU."""
    fake = fake_cupy._make_fake_cupy()
    fake.RawModule = cuda_emulation.EmulatedModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_training, "_module_cache", {})


@pytest.fixture
def emulated_cupy(monkeypatch, module):
    install_emulated_cupy(monkeypatch)
    yield
    assert cuda_training._module_cache, "no kernel was launched"


@given(n=st.integers(1, 12), n_in=st.integers(1, 70), k_fraction=st.floats(0, 1),
       batch=st.integers(1, 140), dtype=st.sampled_from(DTYPES),
       index_dtype=st.sampled_from(INDEX_DTYPES), seed=st.integers(0, 2**32 - 1))
def test_the_real_launches_on_drawn_shapes(module, n, n_in, k_fraction, batch, dtype,
                                           index_dtype, seed):
    rng = np.random.default_rng(seed)
    k = 1 + int(k_fraction * (n_in - 1))
    values, indices = make_layer(rng, n, n_in, k, dtype, index_dtype)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    with pytest.MonkeyPatch.context() as monkeypatch:
        install_emulated_cupy(monkeypatch)
        on = {key: to_device(a, "cuda") for key, a in
              dict(values=values, indices=indices, x=x, dy=dy).items()}
        y = to_numpy(tk.linear_forward(on["values"], on["indices"], on["x"]))
        dx, dvalues = (to_numpy(a) for a in
                       tk.linear_backward(on["values"], on["indices"], on["x"], on["dy"]))
    assert_near(y, tk.linear_forward_reference(values, indices, x), dtype)
    assert_near(dx, tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)
    assert_near(dvalues, tk.linear_weight_grad_reference(indices, x, dy), dtype)


def test_the_real_launches_run_the_kernels_through_the_public_functions(emulated_cupy):
    for shape in SHAPES:
        for dtype in DTYPES:
            for index_dtype in INDEX_DTYPES:
                values, indices, x, dy, bias = _layer(shape, dtype, index_dtype)
                n_in = shape[1]
                on = {key: to_device(a, "cuda") for key, a in
                      dict(values=values, indices=indices, x=x, dy=dy, bias=bias).items()}
                y = tk.linear_forward(on["values"], on["indices"], on["x"], on["bias"])
                assert_near(to_numpy(y), tk.linear_forward_reference(values, indices, x, bias),
                            dtype)
                dx, dvalues = tk.linear_backward(on["values"], on["indices"], on["x"], on["dy"])
                assert_near(to_numpy(dx),
                            tk.linear_input_grad_reference(values, indices, dy, n_in), dtype)
                assert_near(to_numpy(dvalues),
                            tk.linear_weight_grad_reference(indices, x, dy), dtype)
    module = cuda_training._module_cache[0]
    assert {name for name, _, _ in module.launches} == set(cuda_training.NAME_EXPRESSIONS)
    # m 700 on 12 stored weights: the weight gradient ran in segments, summed on the device.
    assert any(name.startswith("weight_grad") and grid[1] > 1
               for name, grid, _ in module.launches)


@pytest.mark.parametrize("case", CONV_CASES)
def test_the_real_launches_run_the_convolutions(emulated_cupy, case):
    values, indices, x, dy, bias = _conv_problem(case, np.float64, np.int16, 3 + sum(case))
    kh, kw, stride, padding = case[5:9]
    spec = dict(kernel_size=(kh, kw), stride=stride, padding=padding)
    on = {key: to_device(a, "cuda") for key, a in
          dict(values=values, indices=indices, x=x, dy=dy, bias=bias).items()}
    assert_near(to_numpy(tk.conv2d_forward(on["values"], on["indices"], on["x"],
                                           bias=on["bias"], **spec)),
                tk.conv2d_forward_reference(values, indices, x, bias=bias, **spec), np.float64)
    dx, dvalues = tk.conv2d_backward(on["values"], on["indices"], on["x"], on["dy"], **spec)
    assert_near(to_numpy(dx), tk.conv2d_input_grad_reference(values, indices, dy, x.shape,
                                                             **spec), np.float64)
    assert_near(to_numpy(dvalues), tk.conv2d_weight_grad_reference(indices, x, dy, **spec),
                np.float64)


def test_the_real_launches_handle_empty_shapes(emulated_cupy):
    rng = np.random.default_rng(24)
    values, indices = make_layer(rng, 3, 7, 2, np.float32, np.int32)
    on = {key: to_device(a, "cuda") for key, a in dict(
        values=values, indices=indices, x=np.zeros((0, 7), np.float32),
        dy=np.zeros((0, 3), np.float32)).items()}
    assert to_numpy(tk.linear_forward(on["values"], on["indices"], on["x"])).shape == (0, 3)
    dx, dvalues = tk.linear_backward(on["values"], on["indices"], on["x"], on["dy"])
    assert to_numpy(dx).shape == (0, 7)
    np.testing.assert_array_equal(to_numpy(dvalues), np.zeros((3, 2), np.float32))
    bias = np.arange(3, dtype=np.float32)
    empty = {key: to_device(a, "cuda") for key, a in dict(
        values=np.zeros((3, 0), np.float32), indices=np.zeros((3, 0), np.int32),
        x=np.ones((2, 7), np.float32), dy=np.ones((2, 3), np.float32), bias=bias).items()}
    np.testing.assert_array_equal(
        to_numpy(tk.linear_forward(empty["values"], empty["indices"], empty["x"],
                                   empty["bias"])), np.tile(bias, (2, 1)))
    dx, dvalues = tk.linear_backward(empty["values"], empty["indices"], empty["x"], empty["dy"])
    np.testing.assert_array_equal(to_numpy(dx), np.zeros((2, 7), np.float32))
    assert to_numpy(dvalues).shape == (3, 0)
