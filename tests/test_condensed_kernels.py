"""The condensed kernels against a plain NumPy reference, and their boundary checks."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from srigl_np._kernels import (MIN_COLUMN_BLOCK, SEGMENT_NONZEROS, CondensedWeights,
                               column_block_width, condensed_matmul, condensed_matvec,
                               tile_vectors)

INDEX_DTYPES = (np.int16, np.int32)


def reference(values, indices, x, bias=None):
    """y[b, r] = sum_j values[r, j] * x[b, indices[r, j]] (+ bias[r]), in float64."""
    y = (values.astype(np.float64) * x.astype(np.float64)[..., indices]).sum(axis=-1)
    return y if bias is None else y + bias


def random_weights(rng, n_in, n_active, k, index_dtype):
    indices = np.sort(np.argsort(rng.random((n_active, n_in)), axis=1)[:, :k], axis=1)
    values = rng.standard_normal((n_active, k)).astype(np.float32)
    return values, indices.astype(index_dtype)


def assert_matches(y, expected):
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * scale)


# (n_in, n_active, k, batch): k = 1, k = n_in, one neuron, batch 1, odd batches, tails
# of every tile width, several full 64-wide tiles, layers of several column blocks
# (k = 1025 of 1025 gives nine 128-column blocks, k = 300 of 2500 fourteen of 192), and
# more than 128 rows, which make several row blocks.
SHAPES = [(1, 1, 1, 1), (9, 1, 9, 1), (9, 5, 9, 2), (50, 13, 1, 3), (50, 13, 50, 65),
          (300, 40, 17, 1), (300, 40, 17, 7), (300, 37, 17, 129), (33, 5, 4, 200),
          (2000, 3, 200, 17), (40, 70, 6, 256), (2500, 7, 300, 33), (3100, 131, 310, 40),
          (1025, 9, 1025, 9)]


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_in, n_active, k, batch", SHAPES)
def test_matmul_matches_reference(n_in, n_active, k, batch, threads, index_dtype):
    rng = np.random.default_rng(n_in * 1000 + batch)
    values, indices = random_weights(rng, n_in, n_active, k, index_dtype)
    weights = CondensedWeights(values, indices, n_in)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    bias = rng.standard_normal(n_active).astype(np.float32)
    assert_matches(condensed_matmul(weights, x, bias, threads), reference(values, indices, x, bias))
    assert_matches(condensed_matmul(weights, x, None, threads), reference(values, indices, x))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_matvec_matches_reference(index_dtype):
    rng = np.random.default_rng(1)
    values, indices = random_weights(rng, 70, 11, 9, index_dtype)
    weights = CondensedWeights(values, indices, 70)
    x = rng.standard_normal(70).astype(np.float32)
    bias = rng.standard_normal(11).astype(np.float32)
    y = condensed_matvec(weights, x, bias, threads=2)
    assert y.shape == (11,) and y.dtype == np.float32
    assert_matches(y, reference(values, indices, x, bias))


def test_non_contiguous_and_float64_input_is_converted():
    rng = np.random.default_rng(2)
    values, indices = random_weights(rng, 40, 8, 5, np.int16)
    weights = CondensedWeights(values, indices, 40)
    wide = rng.standard_normal((9, 80))
    for x in (wide[:, ::2], wide[:, ::2].astype(np.float32), wide[::3, :40]):
        assert_matches(condensed_matmul(weights, x), reference(values, indices, x))
    row = wide[0, ::2]
    assert_matches(condensed_matvec(weights, row), reference(values, indices, row))


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_with_nothing_in_some_column_blocks(threads):
    # n_in 1024, k 128: eight 128-column blocks; row 0 lives in the first, row 1 in the
    # last, row 2 straddles two, row 3 is spread out, so segments are of 0..128.
    rng = np.random.default_rng(4)
    indices = np.stack([np.arange(128), np.arange(896, 1024), np.arange(192, 320),
                        np.arange(0, 1024, 8)]).astype(np.int16)
    values = rng.standard_normal(indices.shape).astype(np.float32)
    weights = CondensedWeights(values, indices, 1024)
    assert weights.column_blocks == 8
    x = rng.standard_normal((45, 1024)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    assert_matches(condensed_matmul(weights, x, bias, threads),
                   reference(values, indices, x, bias))


def test_duplicate_indices_are_summed_like_the_reference():
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    indices = np.array([[2, 2, 0]], dtype=np.int32)
    x = np.array([[10.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(condensed_matmul(CondensedWeights(values, indices, 3), x),
                                  [[33.0]])


@given(n_in=st.one_of(st.integers(1, 120), st.integers(MIN_COLUMN_BLOCK - 2, 3000)),
       n_active=st.integers(1, 40), batch=st.integers(1, 150),
       seed=st.integers(0, 2**32 - 1), wide=st.booleans())
def test_property_matches_reference(n_in, n_active, batch, seed, wide):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, min(n_in, 300) + 1))
    values, indices = random_weights(rng, n_in, n_active, k, np.int32 if wide else np.int16)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    assert_matches(condensed_matmul(CondensedWeights(values, indices, n_in), x),
                   reference(values, indices, x))


def test_same_input_same_output_bit_for_bit_across_thread_counts():
    rng = np.random.default_rng(3)
    values, indices = random_weights(rng, 500, 64, 50, np.int16)
    weights = CondensedWeights(values, indices, 500)
    x = rng.standard_normal((100, 500)).astype(np.float32)
    np.testing.assert_array_equal(condensed_matmul(weights, x, threads=1),
                                  condensed_matmul(weights, x, threads=2))


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


@pytest.mark.parametrize("n_in, k", [(5, 5), (256, 256), (257, 257), (2000, 300), (3000, 9)])
def test_weights_are_packed_by_column_block(n_in, k):
    rng = np.random.default_rng(n_in)
    n_active = 6
    indices = np.argsort(rng.random((n_active, n_in)), axis=1)[:, :k].astype(np.int32)
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
    for array in (weights.packed_values, weights.packed_indices, starts):
        assert not array.flags.writeable


# --- boundary checks: each bad argument is refused with a message naming it ----------------

def good_arguments():
    values = np.ones((3, 2), dtype=np.float32)
    indices = np.array([[0, 1], [1, 2], [0, 2]], dtype=np.int16)
    return values, indices


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


def test_index_equal_to_n_in_is_refused_and_n_in_minus_one_accepted():
    values, indices = good_arguments()
    CondensedWeights(values, indices, 3)
    with pytest.raises(ValueError, match="indices"):
        CondensedWeights(values, indices, 2)


@pytest.mark.parametrize("call, error, name", [
    (lambda w: condensed_matmul(w, np.ones((2, 4), dtype=np.float32)), ValueError, "x"),
    (lambda w: condensed_matmul(w, np.ones(3, dtype=np.float32)), ValueError, "x"),
    (lambda w: condensed_matmul(w, np.ones((2, 3), dtype=np.int32)), TypeError, "x"),
    (lambda w: condensed_matvec(w, np.ones((1, 3), dtype=np.float32)), ValueError, "x"),
    (lambda w: condensed_matmul(w, np.ones((2, 3), dtype=np.float32), np.ones(2, np.float32)),
     ValueError, "bias"),
    (lambda w: condensed_matmul(w, np.ones((2, 3), dtype=np.float32), np.ones(3)),
     TypeError, "bias"),
    (lambda w: condensed_matmul(w, np.ones((2, 3), dtype=np.float32), threads=-1),
     ValueError, "threads"),
    (lambda w: condensed_matmul(None, np.ones((2, 3), dtype=np.float32)), TypeError, "weights"),
])
def test_kernels_refuse_bad_arguments(call, error, name):
    weights = CondensedWeights(*good_arguments(), 3)
    with pytest.raises(error, match=name):
        call(weights)


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


def test_empty_batch_gives_empty_output():
    weights = CondensedWeights(*good_arguments(), 3)
    assert condensed_matmul(weights, np.ones((0, 3), dtype=np.float32)).shape == (0, 3)


def test_large_batches_run_in_chunks_like_one():
    # n_in = 40000: one 64-wide tile of x is 10 MB, over CHUNK_BYTES, so a chunk is one
    # tile and 100 rows take two chunks (64 + 36); k = 30 makes two column blocks.
    rng = np.random.default_rng(4)
    values, indices = random_weights(rng, 40000, 5, 30, np.int32)
    weights = CondensedWeights(values, indices, 40000)
    assert weights.column_blocks == 2
    x = rng.standard_normal((100, 40000)).astype(np.float32)
    assert_matches(condensed_matmul(weights, x, threads=2), reference(values, indices, x))
