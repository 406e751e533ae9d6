"""The condensed product: one case list run over every backend, and the kernels' boundary checks.

Backends (BACKENDS), each given the same (values, indices, n_in, x, bias):

    reference   the plain-NumPy definition ``kernels.condensed_reference``
    product     the Cython kernel through ``kernels.condensed_product`` (its own choice of
                path: the gather-dot at batch 1, tiles of 8 * tile_vectors(batch) otherwise)
    tiled-nvN   the batched (tiled) kernel forced to tile width 8 * N, N in {1, 2, 4, 8},
                batch 1 included (the hook ``_kernels._condensed_matmul_tiled``)
    matvec      ``condensed_matvec`` row by row (its own choice of batch-1 kernel)
    matvec-lookup, matvec-gather-dot, matvec-interleaved
                the same forced onto one batch-1 kernel (the hook
                ``_kernels._condensed_matvec_kernel``), on each path that has it: the
                AVX-512 table lookup (avx512), the interleaved rows (avx2, avx512: groups
                of 8 rows, padding lanes in the last group) and the gather-dot (every
                path; on generic ``matvec`` is the gather-dot)
    cupy        the CUDA kernels (``cuda.CudaCondensedWeights``); marked ``gpu``, skipped
                with the reason when ``backend.cupy()`` raises DeviceError

The Cython backends (product, tiled-nvN, matvec) run on each CPU path of the build
(``-avx512``, ``-avx2``, ``-generic``: ``kernels.set_cpu_path``); a path this CPU cannot
run is skipped with the reason.

Every case runs at int16 and int32 indices (int16 is skipped only where n_in exceeds its
range), with a bias and without, and at threads 1 and 2 on the threaded backends; the
oracle is the definition computed in float64 (``reference``). threads=2 also has to match
threads=1 bit for bit; it is skipped in a build without OpenMP.
"""

import functools
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from srigl_np import backend as device_backend
from srigl_np._kernels import (INTERLEAVED_MIN_ROWS, LOOKUP_MAX_PADDING, MIN_COLUMN_BLOCK,
                               PATH_NAMES,
                               SEGMENT_NONZEROS, _condensed_matmul_tiled,
                               _condensed_matvec_kernel, vector_kernel)
from srigl_np.kernels import (CondensedWeights, column_block_width, condensed_matmul,
                              condensed_matvec, condensed_product, condensed_reference,
                              cpu_path, cpu_paths, openmp_enabled, set_cpu_path,
                              tile_vectors)
from strategies import condensed_weights, seeds

INDEX_DTYPES = (np.int16, np.int32)
TILE_VECTORS = (1, 2, 4, 8)
NO_OPENMP = "built without OpenMP: threads=2 would run on one thread"


def reference(values, indices, x, bias=None):
    """y[b, r] = sum_j values[r, j] * x[b, indices[r, j]] (+ bias[r]), in float64."""
    y = (values.astype(np.float64) * x.astype(np.float64)[..., indices]).sum(axis=-1)
    return y if bias is None else y + bias


def random_weights(rng, n_in, n_active, k, index_dtype):
    indices = np.sort(np.argsort(rng.random((n_active, n_in)), axis=1)[:, :k], axis=1)
    values = rng.standard_normal((n_active, k)).astype(np.float32)
    return values, indices.astype(index_dtype)


def assert_matches(y, expected):
    assert y.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * scale)


# --- the problems ---------------------------------------------------------------------------

class Problem(NamedTuple):
    """values[n_active, k] float32, indices[n_active, k], n_in; the input is
    x = x_base[view] (a view, so a backend can rebuild the same strides on its device);
    bias[n_active] float32."""
    values: np.ndarray
    indices: np.ndarray
    n_in: int
    x_base: np.ndarray
    view: object
    bias: np.ndarray

    @property
    def x(self):
        return self.x_base[self.view]

    def weights(self):
        return CondensedWeights(self.values, self.indices, self.n_in)


class Case(NamedTuple):
    """One entry of CASES: ``build(index_dtype)`` makes its Problem. column_blocks: the
    CondensedWeights column blocks the case is meant to exercise (checked); expected: the
    exact y without bias (then every backend must give it exactly, with bias too)."""
    id: str
    n_in: int
    build: Callable
    column_blocks: int | None = None
    expected: tuple | None = None


def random_case(n_in, n_active, k, batch, seed=None, column_blocks=None, name=None):
    """Random weights and x, a random bias; the seed defaults to n_in * 1000 + batch."""
    def build(index_dtype):
        rng = np.random.default_rng(n_in * 1000 + batch if seed is None else seed)
        values, indices = random_weights(rng, n_in, n_active, k, index_dtype)
        x = rng.standard_normal((batch, n_in)).astype(np.float32)
        bias = rng.standard_normal(n_active).astype(np.float32)
        return Problem(values, indices, n_in, x, ..., bias)
    return Case(name or f"{n_in}x{n_active}k{k}b{batch}", n_in, build, column_blocks)


def strided_case(name, make_x):
    """Weights (40 inputs, 8 rows, k 5) with x = make_x(wide), wide (9, 80) float64,
    returning (x_base, view)."""
    def build(index_dtype):
        rng = np.random.default_rng(2)
        values, indices = random_weights(rng, 40, 8, 5, index_dtype)
        wide = rng.standard_normal((9, 80))
        x_base, view = make_x(wide)
        return Problem(values, indices, 40, x_base, view, rng.standard_normal(8).astype(np.float32))
    return Case(name, 40, build)


def rows_in_some_blocks(index_dtype):
    # n_in 1024, k 128: eight 128-column blocks; row 0 lives in the first, row 1 in the
    # last, row 2 straddles two, row 3 is spread out, so segments are of 0..128.
    rng = np.random.default_rng(4)
    indices = np.stack([np.arange(128), np.arange(896, 1024), np.arange(192, 320),
                        np.arange(0, 1024, 8)]).astype(index_dtype)
    values = rng.standard_normal(indices.shape).astype(np.float32)
    x = rng.standard_normal((45, 1024)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    return Problem(values, indices, 1024, x, ..., bias)


def nonfinite_outside_the_rows(index_dtype):
    # x holds NaN and inf in the columns no row reads: 63 and 126, which follow the lookup
    # kernel's first two 63-column blocks (where a padding lane would read if the table's
    # zero slot were x), and 127..129. The rows read 7 of the other columns each, a
    # different number in each block, so both blocks have padding lanes; every output
    # must stay finite.
    rng = np.random.default_rng(5)
    readable = np.setdiff1d(np.arange(126), [63])
    indices = np.sort(np.stack([rng.choice(readable, 7, replace=False) for _ in range(20)]),
                      axis=1)
    values = rng.standard_normal(indices.shape).astype(np.float32)
    x = rng.standard_normal((2, 130)).astype(np.float32)
    x[:, [63, 127, 129]] = np.nan
    x[:, [126, 128]] = np.inf
    bias = rng.standard_normal(20).astype(np.float32)
    return Problem(values, indices.astype(index_dtype), 130, x, ..., bias)


def duplicate_indices(index_dtype):
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    indices = np.array([[2, 2, 0]], dtype=index_dtype)
    x = np.array([[10.0, 0.0, 1.0]], dtype=np.float32)
    return Problem(values, indices, 3, x, ..., np.array([0.5], dtype=np.float32))


def good_arguments(index_dtype=np.int16):
    values = np.ones((3, 2), dtype=np.float32)
    indices = np.array([[0, 1], [1, 2], [0, 2]], dtype=index_dtype)
    return values, indices


def empty_batch(index_dtype):
    values, indices = good_arguments(index_dtype)
    return Problem(values, indices, 3, np.ones((0, 3), dtype=np.float32), ...,
                   np.ones(3, dtype=np.float32))


# (n_in, n_active, k, batch): k = 1, k = n_in, one neuron, batch 1, odd batches, tails
# of every tile width, several full 64-wide tiles, layers of several column blocks
# (k = 1025 of 1025 gives nine 128-column blocks, k = 300 of 2500 fourteen of 192), and
# more than 128 rows, which make several row blocks; past 64 rows, rests after the full
# 64-wide tiles in tiles of their own width (65, 129, 200: 8 wide; 84: 32; 197, a ViT
# image's tokens: 8; 100: 64).
SHAPES = [(1, 1, 1, 1), (9, 1, 9, 1), (9, 5, 9, 2), (50, 13, 1, 3), (50, 13, 50, 65),
          (50, 13, 5, 84), (768, 20, 77, 197),
          (300, 40, 17, 1), (300, 40, 17, 7), (300, 37, 17, 129), (33, 5, 4, 200),
          (2000, 3, 200, 17), (40, 70, 6, 256), (2500, 7, 300, 33), (3100, 131, 310, 40),
          (1025, 9, 1025, 9)]
BLOCKS = {(2500, 7, 300, 33): 14, (1025, 9, 1025, 9): 9}

CASES = [random_case(*shape, column_blocks=BLOCKS.get(shape)) for shape in SHAPES] + [
    random_case(70, 11, 9, 1, seed=1, name="matvec-70x11k9"),
    # x of another dtype or strides is converted (float64 views, a float32 copy of one).
    strided_case("x-float64-strided-columns", lambda wide: (wide, np.s_[:, ::2])),
    strided_case("x-float32-from-strided", lambda wide: (wide[:, ::2].astype(np.float32), ...)),
    strided_case("x-float32-strided-columns",
                 lambda wide: (wide.astype(np.float32), np.s_[:, ::2])),
    strided_case("x-float64-strided-rows", lambda wide: (wide, np.s_[::3, :40])),
    Case("rows-with-nothing-in-some-column-blocks", 1024, rows_in_some_blocks, column_blocks=8),
    Case("duplicate-indices-are-summed", 3, duplicate_indices, expected=((33.0,),)),
    Case("nonfinite-x-outside-the-rows", 130, nonfinite_outside_the_rows),
    # The lookup kernel's edges: n_in at and around its 63-column blocks, row groups of
    # 16 with 1, 15, 16, 17 and 33 rows, a fully dense row group, a row with 40 copies
    # of one column (one block, 40 steps).
    random_case(63, 15, 9, 1, seed=6, name="lookup-63x15k9"),
    random_case(64, 16, 64, 1, seed=7, name="lookup-64x16-dense"),
    random_case(127, 17, 30, 2, seed=8, name="lookup-127x17k30"),
    random_case(126, 33, 1, 1, seed=9, name="lookup-126x33k1"),
    random_case(190, 1, 50, 1, seed=10, name="lookup-190x1k50"),
    Case("lookup-one-column-40-times", 70, lambda index_dtype: Problem(
        np.linspace(-1, 1, 40, dtype=np.float32)[None], np.full((1, 40), 66, index_dtype),
        70, np.arange(70, dtype=np.float32)[None] / 7, ..., np.ones(1, np.float32))),
    # The interleaved rows' edges: fewer than 8 rows (all padding lanes but 7), 9 and 23
    # rows (a last group of 1 and of 7), k = 1 and odd k (a last step of its own), and
    # x[0], where the padding lanes read, non-finite while no row reads it.
    random_case(40, 7, 3, 1, seed=11, name="interleaved-40x7k3"),
    random_case(40, 9, 3, 1, seed=12, name="interleaved-40x9k3"),
    random_case(33, 8, 1, 2, seed=13, name="interleaved-33x8k1"),
    random_case(100, 23, 16, 1, seed=14, name="interleaved-100x23k16"),
    Case("interleaved-nonfinite-x0-unread", 30, lambda index_dtype: Problem(
        np.linspace(-1, 1, 9 * 4, dtype=np.float32).reshape(9, 4),
        np.tile(np.array([3, 7, 12, 29], index_dtype), (9, 1)), 30,
        np.concatenate([[np.inf], np.arange(1, 30, dtype=np.float32)])[None], ...,
        np.ones(9, np.float32))),
    # Enough work for both threads: the case for bit-for-bit equality across thread counts.
    random_case(500, 64, 50, 100, seed=3, name="threads-500x64k50b100"),
    # n_in = 40000: each thread's transposed 64-wide tile is 10 MB; 100 rows are a
    # 64-wide tile and a 64-wide tail of 36; k = 30 makes two column blocks.
    random_case(40000, 5, 30, 100, seed=4, column_blocks=2, name="wide-40000"),
    # The same at n_in = 32768, the widest layer int16 indices can address.
    random_case(32768, 5, 30, 100, seed=4, column_blocks=2, name="wide-32768"),
    Case("empty-batch", 3, empty_batch),
]


def case_params():
    """(case, index_dtype) for every case at both index dtypes; int16 past its range skips."""
    for case in CASES:
        for index_dtype in INDEX_DTYPES:
            marks = ()
            if case.n_in - 1 > np.iinfo(index_dtype).max:
                marks = pytest.mark.skip(reason=f"n_in {case.n_in} is past the range of "
                                                f"{np.dtype(index_dtype).name} indices")
            yield pytest.param(case, index_dtype, marks=marks,
                               id=f"{case.id}-{np.dtype(index_dtype).name}")


CASE_PARAMS = list(case_params())


# --- the backends ---------------------------------------------------------------------------

def check_kernel_output(y, problem):
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == (problem.x.shape[0], problem.values.shape[0])
    return y


def run_reference(problem, bias, threads):
    return condensed_reference(problem.values, problem.indices, problem.x, bias)


def run_product(problem, bias, threads):
    return check_kernel_output(
        condensed_product(problem.weights(), problem.x, bias, threads), problem)


def tiled_runner(n_vectors):
    def run_tiled(problem, bias, threads):
        return check_kernel_output(
            _condensed_matmul_tiled(problem.weights(), problem.x, bias, threads,
                                    n_vectors=n_vectors), problem)
    return run_tiled


def matvec_runner(matvec):
    def run_matvec(problem, bias, threads):
        weights, n_active = problem.weights(), problem.values.shape[0]
        rows = []
        for row in problem.x:
            y = matvec(weights, row, bias, threads)
            assert y.shape == (n_active,) and y.dtype == np.float32
            rows.append(y)
        return np.stack(rows) if rows else np.empty((0, n_active), dtype=np.float32)
    return run_matvec


run_matvec = matvec_runner(condensed_matvec)


@functools.cache
def gpu():
    """(cupy, None) with a usable GPU, else (None, why not)."""
    try:
        return device_backend.cupy(), None
    except device_backend.DeviceError as exc:
        return None, str(exc)


def require_gpu():
    cp, reason = gpu()
    if cp is None:
        pytest.skip(f"needs CuPy and a CUDA GPU: {reason}")
    return cp


def run_cupy(problem, bias, threads):
    cp = require_gpu()
    from srigl_np.cuda import CudaCondensedWeights  # being written: import it lazily

    weights = CudaCondensedWeights(problem.values, problem.indices, problem.n_in)
    x = cp.asarray(problem.x_base)[problem.view]
    y = condensed_product(weights, x, None if bias is None else cp.asarray(bias))
    assert device_backend.is_cupy_array(y) and y.dtype == np.float32
    return cp.asnumpy(y)


def on_path(path, run):
    """``run`` with the Cython kernels switched to CPU path ``path`` for the call."""
    def run_on_path(problem, bias, threads):
        previous = set_cpu_path(path)
        try:
            return run(problem, bias, threads)
        finally:
            set_cpu_path(previous)
    return run_on_path


class Backend(NamedTuple):
    id: str
    run: Callable            # (problem, bias or None, threads) -> y, a NumPy array
    threaded: bool = False   # takes threads (the OpenMP kernels)
    gpu: bool = False
    path: str = None         # the CPU path of a Cython backend

    def require(self):
        if self.gpu:
            require_gpu()
        if self.path is not None and self.path not in cpu_paths():
            pytest.skip(f"CPU path {self.path} is not available here: {cpu_paths()}")


CYTHON = [("product", run_product)] + [(f"tiled-nv{n}", tiled_runner(n))
                                       for n in TILE_VECTORS] + [("matvec", run_matvec)]
# The batch-1 kernels each path carries beside the gather-dot, each forced.
BATCH1_KERNELS = {"avx512": ("lookup", "gather-dot", "interleaved"),
                  "avx2": ("gather-dot", "interleaved")}


def forced_batch1(path):
    return [(f"matvec-{kernel}", matvec_runner(functools.partial(
        _condensed_matvec_kernel, kernel=kernel))) for kernel in BATCH1_KERNELS.get(path, ())]


BACKENDS = [Backend("reference", run_reference)]
BACKENDS += [Backend(f"{name}-{path}", on_path(path, run), threaded=True, path=path)
             for path in PATH_NAMES for name, run in CYTHON + forced_batch1(path)]
BACKENDS += [Backend("cupy", run_cupy, gpu=True)]
THREADED = [b for b in BACKENDS if b.threaded]


def backend_params(backends=BACKENDS, thread_counts=(1, 2)):
    """(backend, threads): the threaded backends at each of ``thread_counts``, the others
    once (threads None); threads=2 skips without OpenMP, the CUDA backend is marked gpu."""
    for b in backends:
        for threads in (thread_counts if b.threaded else (None,)):
            marks = [pytest.mark.gpu] if b.gpu else []
            if threads == 2:
                marks.append(pytest.mark.skipif(not openmp_enabled(), reason=NO_OPENMP))
            yield pytest.param(b, threads, marks=marks,
                               id=b.id if threads is None else f"{b.id}-t{threads}")


@pytest.fixture(scope="module")
def backend(request):
    """The backend of the parameter; the CUDA one skips here without CuPy and a GPU."""
    request.param.require()
    return request.param


# --- every case on every backend ------------------------------------------------------------

@pytest.mark.parametrize("backend, threads", list(backend_params()), indirect=["backend"])
@pytest.mark.parametrize("case, index_dtype", CASE_PARAMS)
def test_case_matches_reference(case, index_dtype, backend, threads):
    problem = case.build(index_dtype)
    for bias in (problem.bias, None):
        y = backend.run(problem, bias, threads)
        expected = reference(problem.values, problem.indices, problem.x, bias)
        if case.expected is not None:
            np.testing.assert_array_equal(y, expected)
            if bias is None:
                np.testing.assert_array_equal(y, case.expected)
        else:
            assert_matches(y, expected)
        if threads == 2:   # same input, same output, bit for bit, whatever the threads
            np.testing.assert_array_equal(y, backend.run(problem, bias, 1))


@pytest.mark.parametrize("case, index_dtype", CASE_PARAMS)
def test_auto_path_is_the_vector_kernel_at_batch_1_and_the_fitting_tile_otherwise(case,
                                                                                  index_dtype):
    problem = case.build(index_dtype)
    weights, x, bias = problem.weights(), problem.x, problem.bias
    y = condensed_matmul(weights, x, bias)
    if x.shape[0] == 1:
        np.testing.assert_array_equal(y, condensed_matvec(weights, x[0], bias)[None])
    elif x.shape[0] > 1:
        np.testing.assert_array_equal(y, _condensed_matmul_tiled(
            weights, x, bias, n_vectors=tile_vectors(x.shape[0])))


@pytest.mark.parametrize("case", [c for c in CASES if c.column_blocks], ids=lambda c: c.id)
def test_cases_have_the_column_blocks_they_are_meant_to_exercise(case):
    assert case.build(np.int32).weights().column_blocks == case.column_blocks


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.id, indirect=True)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
@given(data=st.data())
def test_property_matches_reference(backend, index_dtype, data):
    values, indices, n_in = data.draw(condensed_weights(
        index_dtype, n_in=st.one_of(st.integers(1, 120), st.integers(MIN_COLUMN_BLOCK - 2, 3000))),
        label="weights")
    batch, seed = data.draw(st.integers(1, 150), label="batch"), data.draw(seeds, label="seed")
    x = np.random.default_rng(seed).standard_normal((batch, n_in)).astype(np.float32)
    problem = Problem(values, indices, n_in, x, ..., None)
    assert_matches(backend.run(problem, None, 0), reference(values, indices, x))


# --- layout -----------------------------------------------------------------------------------

def test_tile_width_fits_the_batch():
    assert [tile_vectors(b) for b in (1, 8, 9, 16, 17, 32, 33, 256)] == [1, 1, 2, 2, 4, 4, 8, 8]


def test_column_blocks_hold_about_16_nonzeros_of_a_row_and_at_least_128_columns():
    assert SEGMENT_NONZEROS == 16 and MIN_COLUMN_BLOCK == 128
    assert column_block_width(768, 77) == 192 and column_block_width(4096, 41) == 1600
    for n_in, k in [(1, 1), (100, 100), (5000, 1), (5000, 5000), (3072, 307)]:
        width = column_block_width(n_in, k)
        target = SEGMENT_NONZEROS * n_in / k
        assert width % 64 == 0 and width >= MIN_COLUMN_BLOCK
        assert width == MIN_COLUMN_BLOCK or target <= width < target + 64


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_in, k", [(5, 5), (256, 256), (257, 257), (2000, 300), (3000, 9)])
def test_weights_are_packed_by_column_block(n_in, k, index_dtype):
    rng = np.random.default_rng(n_in)
    n_active = 6
    indices = np.argsort(rng.random((n_active, n_in)), axis=1)[:, :k].astype(index_dtype)
    values = rng.standard_normal((n_active, k)).astype(np.float32)
    weights = CondensedWeights(values, indices, n_in)
    width = weights.column_block
    assert width == column_block_width(n_in, k)
    blocks = -(-n_in // width)
    starts = weights.starts
    assert weights.column_blocks == blocks and starts.shape == (blocks * n_active + 1,)
    assert starts[0] == 0 and starts[-1] == n_active * k and np.all(np.diff(starts) >= 0)
    for c in range(blocks):
        for r in range(n_active):
            segment = slice(starts[c * n_active + r], starts[c * n_active + r + 1])
            in_block = indices[r] // width == c   # the row's order is kept
            np.testing.assert_array_equal(weights.packed_indices[segment], indices[r][in_block])
            np.testing.assert_array_equal(weights.packed_values[segment], values[r][in_block])
    assert weights.packed_indices.dtype == index_dtype
    for array in (weights.packed_values, weights.packed_indices, starts):
        assert not array.flags.writeable


def lookup_steps_by_definition(indices, order, rows_per_group=16, columns_per_block=63):
    """{(g, b): steps}: the most non-zeros any row of group g (rows order[16g : 16g + 16])
    has in column block b, in plain loops."""
    out = {}
    for position, r in enumerate(order):
        counts = {}
        for c in indices[r]:
            counts[int(c) // columns_per_block] = counts.get(int(c) // columns_per_block, 0) + 1
        for b, count in counts.items():
            key = (position // rows_per_group, b)
            out[key] = max(out.get(key, 0), count)
    return out


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_in, n_active, k", [(1, 1, 1), (63, 16, 63), (64, 17, 5),
                                               (200, 33, 20), (768, 40, 77)])
def test_lookup_layout_holds_every_nonzero_once_in_its_row_lane(n_in, n_active, k, index_dtype):
    rng = np.random.default_rng(n_in + k)
    values, indices = random_weights(rng, n_in, n_active, k, index_dtype)
    weights = CondensedWeights(values, indices, n_in)
    lv, li, steps, offsets, order = weights._lookup_layout()
    assert weights._lookup_layout() is weights._lookup_layout()   # built once
    assert sorted(order.tolist()) == list(range(n_active))        # a permutation of the rows
    n_blocks, n_groups = -(-n_in // 63), -(-n_active // 16)
    expected = lookup_steps_by_definition(indices, order)
    assert steps.shape == (n_groups * n_blocks,) and offsets.shape == (n_groups + 1,)
    for g in range(n_groups):
        for b in range(n_blocks):
            assert steps[g * n_blocks + b] == expected.get((g, b), 0)
    assert offsets[0] == 0 and np.array_equal(
        np.diff(offsets), steps.reshape(n_groups, n_blocks).sum(axis=1))
    assert lv.shape == li.shape == (offsets[-1] * 16,) and lv.ctypes.data % 64 == 0
    assert weights.lookup_padding() == pytest.approx(lv.size / (n_active * k))
    for array in (lv, li, steps, offsets, order):
        assert not array.flags.writeable
    # Walk the layout: every lane is a (row, column, value) of the weights or padding.
    found = {r: [] for r in range(n_active)}
    step = 0
    for g in range(n_groups):
        for b in range(n_blocks):
            for _ in range(steps[g * n_blocks + b]):
                for lane in range(16):
                    value, column = lv[step * 16 + lane], li[step * 16 + lane]
                    if column == 63:
                        assert value == 0
                    else:
                        assert 0 <= column < 63
                        found[int(order[g * 16 + lane])].append((b * 63 + int(column),
                                                                 float(value)))
                step += 1
    for r in range(n_active):
        assert sorted(found[r]) == sorted(zip(indices[r].tolist(), values[r].tolist()))


def test_lookup_grouping_puts_rows_of_alike_blocks_together():
    # Rows 0-15 and 32-47 read the first block, rows 16-31 and 48-63 the second: the
    # greedy grouping pairs like with like (no padding), where groups of consecutive
    # rows would pay both blocks' steps for every row (padding 2).
    first, second = np.arange(0, 40, 8), np.arange(63, 103, 8)
    indices = np.stack([first if (r // 16) % 2 == 0 else second for r in range(64)])
    weights = CondensedWeights(np.ones(indices.shape, np.float32), indices.astype(np.int16),
                               126)
    order = weights._lookup_layout()[4]
    for g in range(4):
        group = order[16 * g:16 * g + 16]
        assert len({(r // 16) % 2 for r in group}) == 1
    assert weights.lookup_padding() == 1.0


def consecutive_rows_padding(indices):
    """The lookup padding with rows grouped 0-15, 16-31, ... (no grouping), by
    definition: 16 * sum over (group, block) of the largest count / non-zeros."""
    n_active, k = indices.shape
    blocks = indices // 63
    counts = np.zeros((-(-n_active // 16) * 16, int(blocks.max()) + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_active), k), blocks.ravel()), 1)
    return 16 * counts.reshape(-1, 16, counts.shape[1]).max(axis=1).sum() / indices.size


def test_lookup_padding_is_1_4_to_1_6_at_10_percent_density_and_grows_with_sparsity():
    rng = np.random.default_rng(0)
    def padding(n_active, n_in, k):
        return CondensedWeights(*random_weights(rng, n_in, n_active, k, np.int16),
                                n_in).lookup_padding()
    assert 1.3 < padding(3072, 768, 77) < 1.5 and 1.45 < padding(768, 3072, 307) < 1.7
    # The grouping is what brings it there: consecutive rows of the same layers pad more.
    for n_active, n_in, k, gain in [(3072, 768, 77, 0.2), (768, 3072, 307, 0.05)]:
        values, indices = random_weights(rng, n_in, n_active, k, np.int16)
        grouped = CondensedWeights(values, indices, n_in).lookup_padding()
        assert grouped < consecutive_rows_padding(indices) - gain
    assert padding(256, 4096, 4) > LOOKUP_MAX_PADDING > padding(256, 768, 40)
    assert padding(16, 64, 64) == 1.0   # dense rows, one full group: no padding
    assert CondensedWeights(np.ones((0, 2), np.float32), np.zeros((0, 2), np.int16),
                            4).lookup_padding() == 0.0


def test_a_layer_too_wide_for_the_lookup_layout_keeps_the_gather_dot():
    # 2**22 inputs make 66578 column blocks: 64 rows need 4.3M counts, over the bound
    # (LOOKUP_MAX_COUNTS, and 8 per non-zero), so no layout is built.
    from srigl_np._kernels import LOOKUP_MAX_COUNTS

    rng = np.random.default_rng(12)
    n_in = 2**22
    indices = np.sort(rng.choice(n_in, size=(64, 2)), axis=1).astype(np.int32)
    weights = CondensedWeights(np.ones((64, 2), np.float32), indices, n_in)
    assert 64 * -(-n_in // 63) > LOOKUP_MAX_COUNTS
    assert weights.lookup_padding() == float("inf") and vector_kernel(weights) != "lookup"
    x = rng.standard_normal(n_in).astype(np.float32)
    assert_matches(condensed_matvec(weights, x)[None], reference(
        weights.values, weights.indices, x[None]))
    if "avx512" in cpu_paths():
        previous = set_cpu_path("avx512")
        try:
            with pytest.raises(ValueError, match="too many column blocks"):
                _condensed_matvec_kernel(weights, x, kernel="lookup")
        finally:
            set_cpu_path(previous)


@pytest.mark.parametrize("path", PATH_NAMES)
def test_batch_1_rule_lookup_where_it_pads_little_then_interleaved_rows_then_gather_dot(path):
    if path not in cpu_paths():
        pytest.skip(f"CPU path {path} is not available here: {cpu_paths()}")
    rng = np.random.default_rng(1)
    light = CondensedWeights(*random_weights(rng, 768, 64, 77, np.int16), 768)
    heavy = CondensedWeights(*random_weights(rng, 4096, 64, 4, np.int16), 4096)
    few = CondensedWeights(*random_weights(rng, 4096, INTERLEAVED_MIN_ROWS - 1, 4, np.int16),
                           4096)
    assert light.lookup_padding() <= LOOKUP_MAX_PADDING < heavy.lookup_padding()
    assert few.lookup_padding() > LOOKUP_MAX_PADDING
    x = rng.standard_normal(768).astype(np.float32)
    previous = set_cpu_path(path)
    try:
        interleaved = "gather-dot" if path == "generic" else "interleaved"
        assert vector_kernel(heavy) == interleaved
        assert vector_kernel(few) == "gather-dot"
        assert vector_kernel(light) == ("lookup" if path == "avx512" else interleaved)
        for weights, n_in in ((light, 768), (heavy, 4096), (few, 4096)):
            xi = rng.standard_normal(n_in).astype(np.float32)
            np.testing.assert_array_equal(condensed_matvec(weights, xi), _condensed_matvec_kernel(
                weights, xi, kernel=vector_kernel(weights)))
        for kernel in ("lookup", "interleaved"):
            if kernel not in BATCH1_KERNELS.get(path, ()):
                with pytest.raises(ValueError, match=f"CPU path '{path}' has no {kernel} kernel"):
                    _condensed_matvec_kernel(light, x, kernel=kernel)
    finally:
        set_cpu_path(previous)


def test_interleaved_layout_holds_each_row_in_its_lane_step_by_step():
    rng = np.random.default_rng(3)
    values, indices = random_weights(rng, 50, 11, 4, np.int16)
    weights = CondensedWeights(values, indices, 50)
    iv, ii = weights._interleaved_layout()
    assert weights._interleaved_layout() is weights._interleaved_layout()   # built once
    assert iv.dtype == np.float32 and ii.dtype == np.int16 and iv.ctypes.data % 64 == 0
    assert not iv.flags.writeable and not ii.flags.writeable
    groups_v, groups_i = iv.reshape(2, 4, 8), ii.reshape(2, 4, 8)   # (group, step, lane)
    np.testing.assert_array_equal(groups_v.transpose(0, 2, 1).reshape(16, 4)[:11], values)
    np.testing.assert_array_equal(groups_i.transpose(0, 2, 1).reshape(16, 4)[:11], indices)
    assert not groups_v[1, :, 3:].any() and not groups_i[1, :, 3:].any()   # padding lanes


@pytest.mark.parametrize("kernel", ["gather", "", None, "LOOKUP", "interleave"])
def test_matvec_kernel_hook_refuses_other_kernel_names(kernel):
    weights = CondensedWeights(*good_arguments(), 3)
    with pytest.raises(ValueError, match="kernel must be"):
        _condensed_matvec_kernel(weights, np.ones(3, np.float32), kernel=kernel)


# --- boundary checks: each bad argument is refused with a message naming it ----------------

@pytest.mark.parametrize("bad, error, name", [
    (dict(values=np.ones((3, 2))), TypeError, "values"),
    (dict(values=[[1.0, 2.0]] * 3), TypeError, "values"),
    (dict(indices=np.zeros((3, 2), dtype=np.int64)), TypeError, "indices"),
    (dict(indices=np.zeros((3, 2), dtype=np.uint16)), TypeError, "indices"),
    (dict(indices=np.array([[0, 1], [1, 3], [0, 2]], dtype=np.int16)), ValueError, "indices"),
    (dict(indices=np.array([[0, 1], [-1, 2], [0, 2]], dtype=np.int32)), ValueError, "indices"),
    (dict(indices=np.zeros((3, 3), dtype=np.int16)), ValueError, "indices"),
    (dict(values=np.ones((3, 0), dtype=np.float32),
          indices=np.zeros((3, 0), dtype=np.int16)), ValueError, "k >= 1"),
    (dict(values=np.ones(6, dtype=np.float32)), ValueError, "values"),
    (dict(n_in=0), ValueError, "n_in"),
])
def test_weights_refuse_bad_arguments(bad, error, name):
    arguments = dict(zip(("values", "indices"), good_arguments()), n_in=3)
    arguments.update(bad)
    with pytest.raises(error, match=name):
        CondensedWeights(arguments["values"], arguments["indices"], arguments["n_in"])


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
def test_index_equal_to_n_in_is_refused_and_n_in_minus_one_accepted(index_dtype):
    values, indices = good_arguments(index_dtype)
    CondensedWeights(values, indices, 3)
    with pytest.raises(ValueError, match="indices"):
        CondensedWeights(values, indices, 2)


def forced(n_vectors):
    return functools.partial(_condensed_matmul_tiled, n_vectors=n_vectors)


# condensed_matmul and the hook at every tile width check the same things.
MATMULS = [pytest.param(condensed_matmul, id="matmul")] + [
    pytest.param(forced(n), id=f"tiled-nv{n}") for n in TILE_VECTORS]


@pytest.mark.parametrize("matmul", MATMULS)
@pytest.mark.parametrize("call, error, name", [
    (lambda mm, w: mm(w, np.ones((2, 4), dtype=np.float32)), ValueError, "x"),
    (lambda mm, w: mm(w, np.ones(3, dtype=np.float32)), ValueError, "x"),
    (lambda mm, w: mm(w, np.ones((2, 3), dtype=np.int32)), TypeError, "x"),
    (lambda mm, w: mm(w, np.ones((2, 3), dtype=np.float32), np.ones(2, np.float32)),
     ValueError, "bias"),
    (lambda mm, w: mm(w, np.ones((2, 3), dtype=np.float32), np.ones(3)), TypeError, "bias"),
    (lambda mm, w: mm(w, np.ones((2, 3), dtype=np.float32), threads=-1), ValueError, "threads"),
    (lambda mm, w: mm(w, np.ones((2, 3), dtype=np.float32), threads=10000), ValueError,
     "threads"),
    (lambda mm, w: mm(w, np.ones((2, 3), dtype=np.float32), threads=True), TypeError, "threads"),
    (lambda mm, w: mm(None, np.ones((2, 3), dtype=np.float32)), TypeError, "weights"),
])
def test_kernels_refuse_bad_arguments(matmul, call, error, name):
    weights = CondensedWeights(*good_arguments(), 3)
    with pytest.raises(error, match=name):
        call(matmul, weights)


@pytest.mark.parametrize("threads, error", [(10000, ValueError), (-1, ValueError),
                                            (True, TypeError), (None, TypeError)])
def test_matvec_refuses_bad_thread_counts(threads, error):
    # One bound, checked before any OpenMP region: libgomp aborts on a count it cannot start.
    weights = CondensedWeights(*good_arguments(), 3)
    with pytest.raises(error, match="threads"):
        condensed_matvec(weights, np.ones(3, dtype=np.float32), threads=threads)


def test_thread_bound_is_the_validation_helper():
    from srigl_np.validation import (THREADS_PER_CPU, check_threads, max_thread_count,
                                     usable_cpus)
    bound = max_thread_count()
    assert bound == THREADS_PER_CPU * usable_cpus()   # no longer max(64, ...): issue 20
    assert check_threads(0) == 0 and check_threads(np.int64(bound)) == bound
    with pytest.raises(ValueError, match="threads"):
        check_threads(bound + 1)
    weights = CondensedWeights(*good_arguments(), 3)
    condensed_matvec(weights, np.ones(3, dtype=np.float32), threads=np.int32(1))


def test_matvec_refuses_a_batch():
    weights = CondensedWeights(*good_arguments(), 3)
    with pytest.raises(ValueError, match="x"):
        condensed_matvec(weights, np.ones((1, 3), dtype=np.float32))


@pytest.mark.parametrize("n_vectors", [0, 3, 16, -1, True, 2.0, "8", None])
def test_tiled_hook_refuses_other_tile_widths(n_vectors):
    weights = CondensedWeights(*good_arguments(), 3)
    with pytest.raises(ValueError, match="n_vectors"):
        _condensed_matmul_tiled(weights, np.ones((2, 3), dtype=np.float32), n_vectors=n_vectors)


def test_weights_are_immutable_copies():
    values, indices = good_arguments()
    weights = CondensedWeights(values, indices, 3)
    indices[0, 0] = 100       # the caller's array, not the validated copy
    values[0, 0] = 5.0
    assert weights.indices[0, 0] == 0 and weights.values[0, 0] == 1.0
    for array in (weights.indices, weights.values):
        with pytest.raises(ValueError):
            array[0, 0] = 2
        with pytest.raises(ValueError):
            array.setflags(write=True)
    with pytest.raises(AttributeError):
        weights.indices = indices


# --- CPU paths ------------------------------------------------------------------------------

def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())
    except OSError:
        return set()


def test_the_best_cpu_path_runs_by_default_and_generic_is_always_there():
    assert cpu_path() == cpu_paths()[0]
    assert cpu_paths()[-1] == "generic"
    assert set(cpu_paths()) <= set(PATH_NAMES) == {"avx512", "avx2", "generic"}
    flags = _cpu_flags()   # what the OS reports (Linux on x86-64)
    if {"avx512f", "avx2", "fma"} <= flags:
        assert cpu_paths()[0] == "avx512"
    elif {"avx2", "fma"} <= flags:
        assert cpu_paths()[0] == "avx2"


@pytest.mark.parametrize("name", ["avx1024", "", None, "AVX2"])
def test_set_cpu_path_refuses_unknown_names(name):
    before = cpu_path()
    with pytest.raises(ValueError, match="name must be one of"):
        set_cpu_path(name)
    assert cpu_path() == before


@pytest.mark.parametrize("path", PATH_NAMES)
def test_set_cpu_path_switches_and_returns_the_previous_path(path):
    if path not in cpu_paths():
        with pytest.raises(ValueError, match="not available here"):
            set_cpu_path(path)
        return
    before = cpu_path()
    assert set_cpu_path(path) == before
    try:
        assert cpu_path() == path
    finally:
        set_cpu_path(before)
    assert cpu_path() == before


# --- fully dense layers run the kernels too ----------------------------------------------------

@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_fully_dense_layer_runs_the_tiled_kernel_not_blas(index_dtype):
    # k = n_in and 8M multiply-adds, where BLAS would have been tempting: the product is
    # the tiled kernel's, bit for bit, whatever the threads.
    rng = np.random.default_rng(11)
    values, indices = random_weights(rng, 512, 64, 512, index_dtype)
    weights = CondensedWeights(values, indices, 512)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    y = condensed_product(weights, x, bias, threads=2)
    np.testing.assert_array_equal(y, _condensed_matmul_tiled(weights, x, bias, 1, n_vectors=8))
    np.testing.assert_array_equal(y, condensed_product(weights, x, bias, threads=1))
    assert_matches(y, reference(values, indices, x, bias))


# --- the condensed convolution: straight from the images ---------------------------------------

# (channels, height, width, kh, kw, stride, padding, n_active, k, batch): k = 1, k = n_in,
# one channel, batch 1, strides 1-3, padding wider than the kernel reaches, 1xN kernels,
# a kernel as wide as the padded image.
CONV_CASES = [
    (32, 26, 26, 3, 3, 1, 0, 64, 19, 3),     # the cnn's second convolution, batch 3
    (1, 28, 28, 3, 3, 1, 0, 32, 9, 2),       # its first: k = n_in
    (3, 7, 5, 3, 2, 2, 1, 4, 1, 2),          # k = 1, stride 2
    (2, 4, 4, 5, 5, 1, 2, 3, 50, 1),         # kernel over the padded image
    (1, 1, 1, 1, 1, 1, 0, 1, 1, 1),          # one pixel, one tap, one channel
    (4, 9, 9, 3, 3, 3, 2, 5, 36, 2),         # stride 3, padding 2
    (1, 2, 9, 1, 7, 1, 3, 2, 7, 1),          # a 1x7 kernel, padding 3
    (2, 11, 6, 4, 1, 2, 0, 3, 5, 4),         # a 4x1 kernel, stride 2
]


def conv_definition(values, indices, x, kh, kw, stride, padding, bias):
    """im2col (the strided definition) + the condensed product, in float64, NCHW."""
    from srigl_np.kernels import im2col_strided

    batch, _, height, width = x.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    cols = im2col_strided(x.astype(np.float64), kh, kw, stride, padding)
    rows = reference(values, indices, cols, bias)
    return rows.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_condensed_conv2d_matches_im2col_and_the_product(case, index_dtype, path):
    from srigl_np._kernels import condensed_conv2d

    if path not in cpu_paths():
        pytest.skip(f"CPU path {path} is not available here: {cpu_paths()}")
    channels, height, width, kh, kw, stride, padding, n_active, k, batch = case
    rng = np.random.default_rng(sum(case))
    values, indices = random_weights(rng, channels * kh * kw, n_active, k, index_dtype)
    weights = CondensedWeights(values, indices, channels * kh * kw)
    # A non-contiguous view: every other image of a wider batch.
    x = rng.standard_normal((2 * batch, channels, height, width)).astype(np.float32)[::2]
    bias = rng.standard_normal(n_active).astype(np.float32)
    previous = set_cpu_path(path)
    try:
        for b in (bias, None):
            y = condensed_conv2d(weights, x, kh, kw, stride, padding, b, threads=1)
            expected = conv_definition(values, indices, x, kh, kw, stride, padding, b)
            assert y.dtype == np.float32 and y.shape == expected.shape
            assert_matches(y, expected)
            if openmp_enabled():   # the same result, bit for bit, at any thread count
                np.testing.assert_array_equal(
                    y, condensed_conv2d(weights, x, kh, kw, stride, padding, b, threads=2))
    finally:
        set_cpu_path(previous)


def test_condensed_conv_is_the_definition_on_every_backend_of_the_dispatcher():
    from srigl_np.kernels import condensed_conv

    rng = np.random.default_rng(5)
    values, indices = random_weights(rng, 2 * 9, 3, 4, np.int16)
    weights = CondensedWeights(values, indices, 18)
    x = rng.standard_normal((2, 2, 6, 5)).astype(np.float64)   # float64 in: converted
    y = condensed_conv(weights, x, (3, 3), 1, 1, None, 1)
    assert_matches(y, conv_definition(values, indices, x, 3, 3, 1, 1, None))
    empty = condensed_conv(weights, x[:0], (3, 3), 1, 1)
    assert empty.shape == (0, 3, 6, 5)


@pytest.mark.parametrize("call, error, match", [
    (lambda w, x: (w, x[0], 3, 3), ValueError, "x must be 4-D"),
    (lambda w, x: (w, x[:, :1], 3, 3), ValueError, "channels\\*kh\\*kw"),
    (lambda w, x: (w, x.astype(np.int32), 3, 3), TypeError, "floating-point"),
    (lambda w, x: (w, x, 3, 3, 0), ValueError, "stride"),
    (lambda w, x: (w, x, 3, 3, 1, -1), ValueError, "padding"),
    (lambda w, x: (w, x[:, :, :2], 3, 3), ValueError, "does not fit"),
    (lambda w, x: (w, x, 3, 3, 1, 0, np.zeros(2, np.float32)), ValueError, "bias"),
    (lambda w, x: (w, x, 3, 3, 1, 0, None, -1), ValueError, "threads"),
    (lambda w, x: (None, x, 3, 3), TypeError, "weights"),
])
def test_condensed_conv2d_refuses_bad_arguments(call, error, match):
    from srigl_np._kernels import condensed_conv2d

    rng = np.random.default_rng(0)
    values, indices = random_weights(rng, 18, 3, 4, np.int16)
    weights = CondensedWeights(values, indices, 18)
    x = np.zeros((2, 2, 5, 5), dtype=np.float32)
    with pytest.raises(error, match=match):
        condensed_conv2d(*call(weights, x))
