"""softmax_cross_entropy and accuracy: hand-worked values, the gradient against central
finite differences in float64, stability for huge logits, and the argument checks."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from srigl_np.nn.losses import accuracy, softmax_cross_entropy
from strategies import seeds


def reference_loss(logits, labels):
    """-mean log softmax(logits)[label], in float64 via log-sum-exp."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def numeric_grad(logits, labels, eps=1e-6):
    """Central differences of the loss, one logit at a time."""
    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        shifted = logits.copy()
        shifted[index] += eps
        up = softmax_cross_entropy(shifted, labels)[0]
        shifted[index] -= 2 * eps
        down = softmax_cross_entropy(shifted, labels)[0]
        grad[index] = (up - down) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, rtol=1e-6, atol=1e-8):
    bad = ~np.isclose(analytic, numeric, rtol=rtol, atol=atol)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"d loss / d logits{list(index)}: "
                             f"analytic {float(analytic[index])!r}, "
                             f"numeric {float(numeric[index])!r} "
                             f"({int(bad.sum())} of {bad.size} entries differ)")


def separated_logits(rng, batch, classes, scale):
    """(batch, classes) float64 logits whose entries in a row differ by >= 0.3 * scale:
    a shuffled ladder of steps 0.5 * scale plus a jitter below 0.1 * scale, so no row
    has a tie (in particular not at its maximum, where the shift by the row max acts)."""
    ladder = np.argsort(rng.random((batch, classes)), axis=1) * 0.5
    jitter = rng.uniform(-0.1, 0.1, (batch, classes))
    offset = rng.uniform(-3, 3, (batch, 1))
    return scale * (ladder + jitter) + offset


@given(batch=st.integers(1, 4), classes=st.integers(1, 5), scale=st.sampled_from([0.1, 1.0, 4.0]),
       seed=seeds)
@example(batch=1, classes=1, scale=1.0, seed=0)      # one class: loss 0, gradient 0
@example(batch=3, classes=2, scale=4.0, seed=1)
def test_gradient_matches_central_differences(batch, classes, scale, seed):
    rng = np.random.default_rng(seed)
    logits = separated_logits(rng, batch, classes, scale)
    labels = rng.integers(0, classes, batch)
    loss, grad = softmax_cross_entropy(logits, labels)
    assert grad.dtype == np.float64 and grad.shape == logits.shape
    assert loss == pytest.approx(reference_loss(logits, labels), rel=1e-12, abs=1e-12)
    assert_grad_close(grad, numeric_grad(logits, labels))
    # softmax - onehot sums to zero in each row.
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)


def test_gradient_check_reports_the_index_and_both_values():
    analytic = np.zeros((2, 3))
    numeric = analytic.copy()
    numeric[1, 2] = 0.5
    with pytest.raises(AssertionError, match=r"logits\[1, 2\]: analytic 0.0, numeric 0.5"):
        assert_grad_close(analytic, numeric)


def test_uniform_logits_hand_worked():
    logits = np.zeros((2, 4))
    loss, grad = softmax_cross_entropy(logits, np.array([0, 3]))
    assert loss == pytest.approx(math.log(4))
    # (softmax - onehot) / batch = (1/4 - onehot) / 2
    np.testing.assert_allclose(grad, [[-0.375, 0.125, 0.125, 0.125],
                                      [0.125, 0.125, 0.125, -0.375]])


def test_huge_logits_stay_finite():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]], dtype=np.float32)
    loss, grad = softmax_cross_entropy(logits, np.array([2, 1]))
    assert loss == pytest.approx(1000.0)   # row 1 is certain and right, row 0 costs 2000
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[0.5, 0.0, -0.5], [0.0, 0.0, 0.0]], atol=1e-7)


def test_float32_logits_give_a_float32_gradient_and_leave_the_input_alone():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((5, 3)).astype(np.float32)
    kept = logits.copy()
    labels = rng.integers(0, 3, 5)
    loss, grad = softmax_cross_entropy(logits, labels)
    assert grad.dtype == np.float32 and isinstance(loss, float)
    assert np.array_equal(logits, kept)
    assert loss == pytest.approx(reference_loss(logits, labels), rel=1e-6)


def test_accuracy_counts_arg_max_hits():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, np.array([1, 1, 1])) == pytest.approx(2 / 3)


LOGITS = np.zeros((3, 4))
LABELS = np.array([0, 1, 3])


@pytest.mark.parametrize("logits, labels, error, fragment", [
    (np.zeros(4), np.array([0]), ValueError,
     r"logits must have shape \(batch, classes\), got \(4,\)"),
    (np.zeros((2, 3, 4)), LABELS[:2], ValueError, "logits must have shape"),
    (np.zeros((3, 4), dtype=np.int64), LABELS, TypeError,
     "logits must be a float array, got int64"),
    (LOGITS, LABELS[:2], ValueError, r"labels must have shape \(3,\), got \(2,\)"),
    (LOGITS, LABELS[:, None], ValueError, r"labels must have shape \(3,\), got \(3, 1\)"),
    (LOGITS, LABELS.astype(np.float64), TypeError, "labels must be integers, got float64"),
    (LOGITS, np.array([0, 1, 4]), ValueError,
     r"labels must be in \[0, 4\), got values in \[0, 4\]"),
    (LOGITS, np.array([-1, 1, 2]), ValueError,
     r"labels must be in \[0, 4\), got values in \[-1, 2\]"),
    (np.zeros((0, 4)), np.zeros(0, dtype=np.int64), ValueError, "at least one row"),
])
@pytest.mark.parametrize("function", [softmax_cross_entropy, accuracy])
def test_bad_arguments_are_refused(function, logits, labels, error, fragment):
    with pytest.raises(error, match=fragment):
        function(logits, labels)
