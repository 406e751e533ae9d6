"""Softmax cross-entropy (with its gradient) and accuracy.

Both compute with the logits' array module (NumPy or CuPy); labels are moved to the
logits' device. The scalar results come back as Python floats.
"""

from ..backend import array_module, on_device_of


def _check_logits_labels(logits, labels):
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {logits.shape}")
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must be a float array, got {logits.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits: (batch, classes) float; labels: (batch,) ints in [0, classes).
    Returns (loss: float, grad_logits: (batch, classes), logits' dtype) with
    grad_logits = (softmax(logits) - onehot(labels)) / batch.

    Stable for any logits: subtracting each row's maximum leaves the softmax unchanged
    and makes every exponent <= 0, so exp never overflows; the loss uses
    log-sum-exp of the shifted row, never log(softmax).
    """
    xp = array_module(logits)
    logits = xp.asarray(logits)
    labels = on_device_of(labels, logits)
    _check_logits_labels(logits, labels)
    batch = logits.shape[0]
    if batch == 0:
        raise ValueError("logits must hold at least one row")
    rows = xp.arange(batch)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = xp.exp(shifted)
    sum_exp = probs.sum(axis=1)
    # Accumulate the scalar loss in float64: batch means of float32 lose digits.
    loss = float(xp.mean(xp.log(sum_exp.astype(xp.float64))
                         - shifted[rows, labels].astype(xp.float64)))
    probs /= sum_exp[:, None]
    probs[rows, labels] -= 1
    probs /= batch
    return loss, probs


def accuracy(logits, labels):
    """Fraction of rows whose arg-max logit equals the label (float in [0, 1])."""
    xp = array_module(logits)
    logits = xp.asarray(logits)
    labels = on_device_of(labels, logits)
    _check_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise ValueError("logits must hold at least one row")
    return float((logits.argmax(axis=1) == labels).mean())
