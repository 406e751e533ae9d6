"""The kernels a condensed ResNet / ViT / MobileNet graph calls, against their definitions.

    condensed_conv2d   the condensed convolution on phase planes (NCHW, fused residual
                       add and ReLU): against im2col (the strided definition) + the
                       condensed product in float64, on the layer shapes of the paper's
                       networks scaled down (1x1, 1x1 stride 2, 3x3, 3x3 stride 2, 7x7
                       stride 2, 16x16 stride 16) and the tiling's edges (every tile width
                       and tail, more than one block of output channels, x read in place
                       and copied into phases, grids under one tile)
    depthwise_conv2d   the depthwise convolution, against ``kernels.depthwise_reference``
                       (itself checked against explicit loops)

Every case runs on each CPU path of the build (``set_cpu_path``; a path this CPU cannot
run is skipped), at int16 and int32 indices where indices are involved, at threads 1 and
2 (which must agree bit for bit; skipped in a build without OpenMP), and the boundary
checks raise naming the argument.
"""

import numpy as np
import pytest

from srigl_np._kernels import _conv_tile_vectors, condensed_conv2d, depthwise_conv2d
from srigl_np.kernels import (CondensedWeights, condensed_conv, depthwise_conv,
                              depthwise_reference, im2col_strided, openmp_enabled)

INDEX_DTYPES = (np.int16, np.int32)
# Output channels per work item of the batched kernels (SRIGL_ROWS in _kernels.h).
ROWS_PER_BLOCK = 128


def random_weights(rng, n_in, n_active, k, index_dtype):
    indices = np.sort(np.argsort(rng.random((n_active, n_in)), axis=1)[:, :k], axis=1)
    values = rng.standard_normal((n_active, k)).astype(np.float32)
    return values, indices.astype(index_dtype)


def conv_definition(values, indices, x, kh, kw, stride, padding, bias, relu=False,
                    residual=None):
    """im2col + the condensed product in float64, NCHW, then relu(y + residual)."""
    batch, _, height, width = x.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    cols = im2col_strided(x.astype(np.float64), kh, kw, stride, padding)
    rows = (values.astype(np.float64) * cols[:, indices]).sum(axis=-1)
    if bias is not None:
        rows = rows + bias
    y = rows.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0) if relu else y


def assert_matches(y, expected):
    assert y.dtype == np.float32 and y.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * scale)



def thread_counts():
    return (1, 2) if openmp_enabled() else (1,)


# --- the tiled condensed convolution ---------------------------------------------------------

# (batch, channels, size, kernel, stride, padding, n_active, k): the paper's networks'
# layer kinds at a smaller scale, and the tiling's edges.
CONV_CASES = [
    (1, 16, 14, 1, 1, 0, 32, 2),       # a bottleneck's 1x1, batch 1 (196 = 3 * 64 + 4)
    (2, 32, 7, 1, 1, 0, 64, 3),        # 1x1 on 7x7 images (49 = 32 + 17)
    (1, 24, 14, 1, 2, 0, 40, 2),       # the strided downsample 1x1
    (2, 8, 12, 3, 1, 1, 16, 7),        # the 3x3 of a bottleneck
    (1, 8, 15, 3, 2, 1, 12, 7),        # the strided 3x3 (odd size)
    (1, 3, 32, 7, 2, 3, 16, 15),       # ResNet's stem, 7x7 stride 2 padding 3
    (1, 3, 32, 7, 2, 3, 8, 147),       # the stem dense (k = n_in)
    (2, 3, 32, 16, 16, 0, 24, 77),     # ViT's patch embedding, 16x16 stride 16
    (1, 4, 5, 3, 1, 1, 1, 1),          # one output channel, k = 1
    (3, 6, 5, 3, 1, 1, ROWS_PER_BLOCK + 9, 5),   # two blocks of output channels
    (1, 2, 1, 1, 1, 0, 3, 1),          # one pixel (an 8-wide tile)
    (1, 5, 3, 3, 1, 1, 4, 9),          # 3x3 pixels, grid 13 (8 and a tail of 8)
    (2, 5, 5, 3, 1, 1, 4, 9),          # grid 33 (32 and a tail of 8)
    (3, 5, 4, 3, 1, 1, 4, 9),          # grid 22 (16 and a tail of 8)
    (1, 4, 9, 5, 3, 2, 6, 11),         # stride 3, padding 2, 5x5
    (2, 4, 10, 3, 1, 0, 8, 9),         # 3x3 read in place (no padding): a 16-wide tail
    (1, 6, 6, 1, 1, 0, 5, 2),          # 1x1 in place, 36 positions: 32 and a tail of 8
    (2, 3, 2, 2, 1, 0, 4, 5),          # a grid under 8 positions: one tile, copied
]


def grid_of(case):
    """Grid positions per image of a case's convolution (see condensed_conv2d)."""
    _, _, size, kernel, stride, padding, _, _ = case
    out = (size + 2 * padding - kernel) // stride + 1
    wq = (size + 2 * padding + stride - 1) // stride
    return (out - 1) * wq + out


def conv_problem(case, index_dtype, seed=0):
    batch, channels, size, kernel, stride, padding, n_active, k = case
    rng = np.random.default_rng(seed + sum(case))
    n_in = channels * kernel * kernel
    values, indices = random_weights(rng, n_in, n_active, k, index_dtype)
    # A non-contiguous view: every other image of a wider batch.
    x = rng.standard_normal((2 * batch, channels, size, size)).astype(np.float32)[::2]
    bias = rng.standard_normal(n_active).astype(np.float32)
    out = (size + 2 * padding - kernel) // stride + 1
    residual = rng.standard_normal((batch, n_active, out, out)).astype(np.float32)
    return values, indices, n_in, x, bias, residual


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_tiled_conv_matches_the_definition(case, index_dtype, path):
    values, indices, n_in, x, bias, residual = conv_problem(case, index_dtype)
    weights = CondensedWeights(values, indices, n_in)
    kernel, stride, padding = case[3], case[4], case[5]
    for b, relu, res in ((bias, False, None), (None, False, None), (bias, True, None),
                         (bias, False, residual), (None, True, residual)):
        expected = conv_definition(values, indices, x, kernel, kernel, stride, padding, b,
                                   relu, res)
        results = [condensed_conv2d(weights, x, kernel, kernel, stride, padding, b,
                                    threads=threads, relu=relu, residual=res)
                   for threads in thread_counts()]
        assert_matches(results[0], expected)
        for other in results[1:]:   # the same result, bit for bit, at any thread count
            np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("grid, widths", [
    (1, (1, 1)), (7, (1, 1)), (8, (1, 1)), (9, (1, 1)), (16, (2, 1)), (49, (4, 4)),
    (64, (8, 1)), (196, (8, 1)), (222, (8, 4)), (3136, (8, 1)), (3248, (8, 8)),
])
def test_conv_tiles_are_the_widest_that_fit_then_the_narrowest_that_covers(grid, widths):
    assert _conv_tile_vectors(grid) == widths


def test_conv_cases_reach_every_tile_width_and_tail_and_both_layouts():
    grids = [grid_of(c) for c in CONV_CASES]
    assert {_conv_tile_vectors(g)[0] for g in grids} == {1, 2, 4, 8}
    # tails: where the widest tile leaves a rest (and the grid is wider than one tile)
    tails = {_conv_tile_vectors(g)[1] for g in grids
             if g > 8 * _conv_tile_vectors(g)[0] and g % (8 * _conv_tile_vectors(g)[0])}
    assert tails == {1, 2, 4, 8}
    in_place = {c[4] == 1 and c[5] == 0 and grid_of(c) >= 8 for c in CONV_CASES}
    assert in_place == {True, False}


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_threads_split_images_and_tiles_and_copy_their_own_planes(batch, index_dtype):
    # 300 channels out (three blocks of rows) of 20 x 20 padded planes (6 tiles): the
    # threads' shares start and end inside images, tiles and row blocks, and each
    # thread copies the phase planes of every image its share touches.
    case = (batch, 6, 18, 3, 1, 1, 300, 20)
    values, indices, n_in, x, bias, residual = conv_problem(case, index_dtype)
    weights = CondensedWeights(values, indices, n_in)
    expected = conv_definition(values, indices, x, 3, 3, 1, 1, bias, True, residual)
    results = [condensed_conv2d(weights, x, 3, 3, 1, 1, bias, threads, relu=True,
                                residual=residual) for threads in thread_counts()]
    assert_matches(results[0], expected)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_a_grid_under_8_positions_reads_the_zeroed_slack_after_its_planes():
    # 1x1 output positions of 300000 channels: the 8-wide tile reads 7 positions past
    # the image's phase planes, into the zeroed slack after them.
    channels = 300_000
    rng = np.random.default_rng(4)
    values, indices = random_weights(rng, channels, 3, 4, np.int32)
    weights = CondensedWeights(values, indices, channels)
    x = rng.standard_normal((3, channels, 2, 2)).astype(np.float32)
    expected = conv_definition(values, indices, x, 1, 1, 2, 0, None)
    for threads in thread_counts():
        assert_matches(condensed_conv2d(weights, x, 1, 1, 2, 0, threads=threads), expected)


def test_out_is_filled_and_returned_and_may_be_the_residual():
    case = (2, 8, 12, 3, 1, 1, 16, 7)
    values, indices, n_in, x, bias, residual = conv_problem(case, np.int16)
    weights = CondensedWeights(values, indices, n_in)
    expected = conv_definition(values, indices, x, 3, 3, 1, 1, bias, True, residual)
    for threads in thread_counts():
        out = np.full_like(residual, np.nan)
        y = condensed_conv(weights, x, (3, 3), 1, 1, bias, threads, relu=True,
                           residual=residual, out=out)
        assert y is out
        assert_matches(y, expected)
        in_place = residual.copy()
        y = condensed_conv2d(weights, x, 3, 3, 1, 1, bias, threads, relu=True,
                             residual=in_place, out=in_place)
        assert y is in_place
        np.testing.assert_array_equal(y, out)


@pytest.mark.parametrize("make_out, error, match", [
    (lambda r, x: r.astype(np.float64), TypeError, "out must be a float32"),
    (lambda r, x: list(r), TypeError, "out must be a float32"),
    (lambda r, x: r[:, :2].copy(), ValueError, "out must have"),
    (lambda r, x: np.zeros(r.shape[::-1], np.float32).T, ValueError, "C-contiguous"),
    (lambda r, x: np.frombuffer(r.tobytes(), np.float32).reshape(r.shape), ValueError,
     "writeable"),
    (lambda r, x: x.reshape(-1)[:r.size].reshape(r.shape), ValueError, "overlap x"),
    (lambda r, x: np.concatenate([r.reshape(-1), r.reshape(-1)])[1:r.size + 1]
     .reshape(r.shape), None, None),
])
def test_out_is_checked(make_out, error, match):
    weights = CondensedWeights(np.ones((3, 1), np.float32), np.zeros((3, 1), np.int16), 4)
    x = np.zeros((2, 4, 4, 4), np.float32)
    residual = np.zeros((2, 3, 4, 4), np.float32)
    out = make_out(residual, x)
    if error is None:   # an unrelated array of the right kind is fine
        condensed_conv2d(weights, x, 1, 1, residual=residual, out=out)
        return
    with pytest.raises(error, match=match):
        condensed_conv2d(weights, x, 1, 1, residual=residual, out=out)


def test_out_must_not_partly_overlap_the_residual():
    weights = CondensedWeights(np.ones((3, 1), np.float32), np.zeros((3, 1), np.int16), 2)
    x = np.zeros((2, 2, 4, 4), np.float32)
    buffer = np.zeros(2 * 3 * 16 + 1, np.float32)
    residual, out = buffer[:-1].reshape(2, 3, 4, 4), buffer[1:].reshape(2, 3, 4, 4)
    with pytest.raises(ValueError, match="out must be residual itself"):
        condensed_conv2d(weights, x, 1, 1, residual=residual, out=out)


def test_relu_keeps_nan_and_zeroes_negatives():
    weights = CondensedWeights(np.ones((2, 1), np.float32), np.zeros((2, 1), np.int16), 1)
    x = np.array([-1.0, np.nan, 2.0], np.float32).reshape(1, 1, 1, 3)
    y = condensed_conv2d(weights, x, 1, 1, relu=True)
    np.testing.assert_array_equal(y[0, 0, 0], [0.0, np.nan, 2.0])


def test_the_dispatcher_fuses_the_epilogue_and_converts_its_input():
    rng = np.random.default_rng(5)
    values, indices = random_weights(rng, 2 * 9, 3, 4, np.int32)
    weights = CondensedWeights(values, indices, 18)
    x = rng.standard_normal((2, 2, 6, 5))   # float64 in: converted
    bias = rng.standard_normal(3).astype(np.float32)
    residual = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    y = condensed_conv(weights, x, (3, 3), 2, 1, bias, 1, relu=True, residual=residual)
    assert_matches(y, conv_definition(values, indices, x, 3, 3, 2, 1, bias, True, residual))
    # a non-contiguous residual is read through a copy
    wide = np.repeat(residual, 2, axis=3)[..., ::2]
    assert_matches(condensed_conv(weights, x, (3, 3), 2, 1, bias, relu=True, residual=wide),
                   y)


@pytest.mark.parametrize("call, error, match", [
    (lambda w, x, r: dict(relu=1), TypeError, "relu"),
    (lambda w, x, r: dict(relu=None), TypeError, "relu"),
    (lambda w, x, r: dict(residual=r.astype(np.float64)), TypeError, "residual"),
    (lambda w, x, r: dict(residual=r[:, :2]), ValueError, "residual"),
    (lambda w, x, r: dict(residual=r[0]), ValueError, "residual"),
    (lambda w, x, r: dict(residual=[0.0]), TypeError, "residual"),
    (lambda w, x, r: dict(bias=np.zeros(3, np.float64)), TypeError, "bias"),
    (lambda w, x, r: dict(threads=-1), ValueError, "threads"),
    (lambda w, x, r: dict(threads=1.5), TypeError, "threads"),
    (lambda w, x, r: dict(x=x.astype(np.int32)), TypeError, "x must be a floating"),
    (lambda w, x, r: dict(x=x[:, :1]), ValueError, "channels"),
    (lambda w, x, r: dict(stride=0), ValueError, "stride"),
])
def test_tiled_conv_refuses_bad_arguments(call, error, match):
    rng = np.random.default_rng(0)
    values, indices = random_weights(rng, 18, 3, 4, np.int16)
    weights = CondensedWeights(values, indices, 18)
    x = np.zeros((2, 2, 5, 5), dtype=np.float32)
    residual = np.zeros((2, 3, 5, 5), dtype=np.float32)
    arguments = dict(x=x, stride=1, bias=None, threads=0)
    arguments.update(call(weights, x, residual))
    keywords = {name: arguments.pop(name) for name in ("relu", "residual")
                if name in arguments}
    with pytest.raises(error, match=match):
        condensed_conv2d(weights, arguments["x"], 3, 3, arguments["stride"], 1,
                         arguments["bias"], arguments["threads"], **keywords)


# --- the depthwise convolution ---------------------------------------------------------------

def depthwise_loops(weight, x, stride, padding, bias):
    """The depthwise convolution by explicit loops, float64 (the definition's check)."""
    batch, channels, height, width = x.shape
    kh, kw = weight.shape[-2:]
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    y = np.zeros((batch, channels, out_h, out_w))
    for b in range(batch):
        for c in range(channels):
            for oh in range(out_h):
                for ow in range(out_w):
                    total = 0.0 if bias is None else float(bias[c])
                    for i in range(kh):
                        for j in range(kw):
                            h, w = oh * stride - padding + i, ow * stride - padding + j
                            if 0 <= h < height and 0 <= w < width:
                                total += float(weight[c, 0, i, j]) * float(x[b, c, h, w])
                    y[b, c, oh, ow] = total
    return y


def test_depthwise_reference_is_the_loops():
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((3, 1, 3, 3))
    x = rng.standard_normal((2, 3, 6, 5))
    bias = rng.standard_normal(3)
    np.testing.assert_allclose(depthwise_reference(weight, x, 2, 1, bias),
                               depthwise_loops(weight, x, 2, 1, bias), atol=1e-12)
    np.testing.assert_allclose(depthwise_reference(weight[:, 0], x, 1, 0, None, relu=True),
                               np.maximum(depthwise_loops(weight, x, 1, 0, None), 0),
                               atol=1e-12)


# (batch, channels, size, kernel, stride, padding): MobileNet-V3's depthwise layers scaled
# down (3x3 and 5x5, stride 1 and 2) and edges.
DEPTHWISE_CASES = [
    (1, 16, 12, 3, 1, 1),
    (2, 8, 11, 3, 2, 1),
    (1, 12, 10, 5, 1, 2),
    (2, 6, 9, 5, 2, 2),
    (1, 1, 1, 1, 1, 0),
    (3, 4, 4, 3, 1, 0),
    (1, 5, 2, 5, 1, 2),        # a filter wider than the image
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_depthwise_conv_matches_the_definition(case, path):
    batch, channels, size, kernel, stride, padding = case
    rng = np.random.default_rng(sum(case))
    weight = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    x = rng.standard_normal((batch, channels, size, 2 * size)).astype(np.float32)[..., ::2]
    bias = rng.standard_normal(channels).astype(np.float32)
    for w, b, relu in ((weight, bias, False), (weight[:, 0], None, False),
                       (weight, bias, True)):
        expected = depthwise_reference(w.astype(np.float64), x.astype(np.float64), stride,
                                       padding, b, relu=relu)
        results = [depthwise_conv(w, x, stride, padding, b, threads, relu=relu)
                   for threads in thread_counts()]
        assert_matches(results[0], expected)
        for other in results[1:]:
            np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("call, error, match", [
    (lambda w, x: (w.astype(np.float64), x), TypeError, "weight"),
    (lambda w, x: (w[..., None], x), ValueError, "weight"),
    (lambda w, x: (w[:2], x), ValueError, "weight"),
    (lambda w, x: (np.zeros((3, 2, 3, 3), np.float32), x), ValueError, "weight"),
    (lambda w, x: (w, x.astype(np.int16)), TypeError, "x must be a floating"),
    (lambda w, x: (w, x[0]), ValueError, "x must be 4-D"),
    (lambda w, x: (w, x, 0), ValueError, "stride"),
    (lambda w, x: (w, x, 1, -1), ValueError, "padding"),
    (lambda w, x: (w, x[:, :, :2], 1, 0), ValueError, "does not fit"),
    (lambda w, x: (w, x, 1, 1, np.zeros(2, np.float32)), ValueError, "bias"),
    (lambda w, x: (w, x, 1, 1, np.zeros(3, np.float64)), TypeError, "bias"),
    (lambda w, x: (w, x, 1, 1, None, -1), ValueError, "threads"),
])
def test_depthwise_conv_refuses_bad_arguments(call, error, match):
    weight = np.zeros((3, 1, 3, 3), np.float32)
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(error, match=match):
        depthwise_conv2d(*call(weight, x))


def test_depthwise_conv_refuses_a_non_bool_relu():
    with pytest.raises(TypeError, match="relu"):
        depthwise_conv2d(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32),
                         relu="yes")
