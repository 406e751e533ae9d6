"""Gradient checks shared by the layer tests: central finite differences in float64, and
forward + backward comparisons with the equivalent torch module."""

import numpy as np


def numeric_grad(loss, array, eps=1e-6, entries=None):
    """Central differences of the scalar ``loss()`` w.r.t. every entry of ``array`` (in
    place), shaped as ``array``; or, given ``entries`` (flat indices), at those entries
    only, as a 1-D array in their order."""
    flat = array.reshape(-1)
    picks = np.arange(flat.size) if entries is None else np.asarray(entries)
    numeric = np.empty(picks.size, dtype=array.dtype)
    for j, i in enumerate(picks):
        saved = flat[i]
        flat[i] = saved + eps
        plus = loss()
        flat[i] = saved - eps
        minus = loss()
        flat[i] = saved
        numeric[j] = (plus - minus) / (2 * eps)
    return numeric.reshape(array.shape) if entries is None else numeric


def assert_close(name, analytic, numeric, rtol=1e-5, atol=1e-7):
    if not np.allclose(analytic, numeric, rtol=rtol, atol=atol):
        i = tuple(int(k) for k in np.unravel_index(np.argmax(np.abs(analytic - numeric)),
                                                   analytic.shape))
        raise AssertionError(f"{name}: gradient mismatch at index {i}: analytic "
                             f"{float(analytic[i])!r}, numeric {float(numeric[i])!r}")


def check_layer_gradients(layer, x, training=True, rng=None):
    """Check d(sum(y * r))/d(x) and /d(every param) with r a fixed random projection."""
    rng = rng or np.random.default_rng(0)
    y = layer.forward(x.copy(), training)
    r = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(layer.forward(x, training) * r))

    layer.forward(x, training)
    grad_x = layer.backward(r.copy())
    analytic = {name: g.copy() for name, g in layer.grads.items()}
    assert_close("input", grad_x, numeric_grad(loss, x))
    for name, param in layer.params.items():
        assert_close(name, analytic[name], numeric_grad(loss, param))


def compare_with_torch(layer, module, x, names, training=True, rtol=1e-5, atol=1e-9,
                       rng=None):
    """Copy ``layer``'s float64 parameters into the torch ``module`` (``names``: {our
    parameter name: torch parameter name}, every parameter of ``layer``), run both forward
    and backward with the same random output gradient and assert agreement of the output,
    the input gradient and every parameter gradient. Returns the largest relative
    difference seen (max |ours - torch| / max |torch| over each array)."""
    import torch
    rng = rng or np.random.default_rng(0)
    module = module.double().train(training)
    torch_params = dict(module.named_parameters())
    assert sorted(names) == sorted(layer.params), "names must cover every parameter"
    with torch.no_grad():
        for ours, theirs in names.items():
            torch_params[theirs].copy_(torch.from_numpy(layer.params[ours]))
    y = layer.forward(x.copy(), training)
    r = rng.standard_normal(y.shape)
    grad_x = layer.backward(r.copy())
    x_torch = torch.from_numpy(x.copy()).requires_grad_()
    y_torch = module(x_torch)
    y_torch.backward(torch.from_numpy(r))
    pairs = [("output", y, y_torch.detach().numpy()), ("input grad", grad_x, x_torch.grad.numpy())]
    pairs += [(f"grad {ours}", layer.grads[ours], torch_params[theirs].grad.numpy())
              for ours, theirs in names.items()]
    worst = 0.0
    for what, mine, theirs in pairs:
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol, err_msg=what)
        worst = max(worst, float(np.abs(mine - theirs).max() / max(np.abs(theirs).max(), 1e-300)))
    return worst
