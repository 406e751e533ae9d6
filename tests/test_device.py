"""Devices: the xp helper, device selection and its errors, and the CuPy code paths.

The CuPy paths are exercised twice. ``fake-cupy`` runs everywhere: a module installed as
``cupy`` whose arrays are NumPy arrays that, like CuPy's, refuse to mix with host
arrays, so every layer, optimizer, DST update, checkpoint and the trainer take their
device branch (im2col_strided, host round trips, explicit transfers) on the CPU and
must match the NumPy path. ``cuda`` (marked ``gpu``) repeats the tests with real CuPy and
skips, with the reason, when CuPy or a GPU is missing.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from srigl_np import backend, dst
from srigl_np import train as train_module
from srigl_np import train_config
from srigl_np.backend import array_module, is_cupy_array, on_device_of, to_numpy
from srigl_np.kernels import col2im, col2im_strided, im2col, im2col_strided
from srigl_np.nn.activations import GELU, Hardsigmoid, Hardswish, Sigmoid
from srigl_np.nn.attention import MultiheadSelfAttention
from srigl_np.nn.blocks import Residual, SqueezeExcite
from srigl_np.nn.layers import Conv2d, Dropout, Flatten, Linear, ReLU, Sequential
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from srigl_np.nn.pooling import GlobalAvgPool2d
from srigl_np.nn.losses import softmax_cross_entropy
from srigl_np.nn.models import build
from srigl_np.nn.optim import SGD, AdamW

from fake_cupy import GPU_REASON, device  # noqa: F401  (a fixture)


def assert_matches(name, device_value, host_value, atol):
    assert is_cupy_array(device_value), f"{name} left the device"
    value = to_numpy(device_value)
    if atol == 0.0:
        assert np.array_equal(value, host_value), f"{name} differs from the NumPy path"
    else:
        np.testing.assert_allclose(value, host_value, rtol=1e-5, atol=atol, err_msg=name)


# -- CPU-only: the xp helper and device selection ----------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("cpu", ("cpu", None)), ("cuda", ("cuda", 0)), ("cuda:0", ("cuda", 0)),
    ("cuda:3", ("cuda", 3)), (" CUDA:1 ", ("cuda", 1)),
])
def test_parse_device_accepts(text, parsed):
    assert backend.parse_device(text) == parsed


@pytest.mark.parametrize("text", ["gpu", "", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "cuda0"])
def test_parse_device_rejects_naming_the_value(text):
    with pytest.raises(ValueError, match="device must be|takes no index"):
        backend.parse_device(text)


def test_parse_device_rejects_non_strings():
    with pytest.raises(TypeError, match="device must be a string"):
        backend.parse_device(0)


def test_array_module_helpers_on_numpy():
    a = np.arange(6.0).reshape(2, 3)
    assert array_module(a) is np and array_module() is np
    assert array_module(a, [1, 2], 3.0) is np
    assert not is_cupy_array(a)
    assert to_numpy(a) is a
    assert on_device_of(a, a) is a
    listed = on_device_of([1, 2], a)
    assert isinstance(listed, np.ndarray) and listed.tolist() == [1, 2]


def test_missing_cupy_raises_device_error_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # `import cupy` raises ImportError
    with pytest.raises(backend.DeviceError, match="pip install"):
        backend.cupy()
    with pytest.raises(backend.DeviceError, match="needs CuPy"):
        Linear(3, 2, rng=np.random.default_rng(0)).to("cuda")
    assert isinstance(backend.DeviceError("x"), RuntimeError)


def test_importing_the_package_never_imports_cupy():
    code = ("import importlib.util, sys\n"
            "import numpy as np\n"
            "import pkgutil, srigl_np\n"
            "for module in pkgutil.iter_modules(srigl_np.__path__):\n"
            "    importlib.import_module('srigl_np.' + module.name)\n"
            "model = srigl_np.nn.models.build('mlp', rng=np.random.default_rng(0))\n"
            "model.forward(np.zeros((2, 1, 28, 28), np.float32), training=True)\n"
            "print('cupy' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_train_cli_without_cupy_is_a_one_line_error(tmp_path):
    # Blocks CuPy even where it is installed, so the test means the same everywhere.
    code = ("import sys; sys.modules['cupy'] = None\n"
            "from srigl_np.train import main\n"
            f"sys.exit(main(['--device', 'cuda', '--dataset', 'embedded', '--epochs', '1', "
            f"'--out', {str(tmp_path / 'run')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m srigl_np.train: error: device 'cuda' needs CuPy")
    assert "pip install" in lines[0]
    assert not (tmp_path / "run").exists()


def test_train_cli_rejects_a_bad_device_in_one_line():
    result = subprocess.run([sys.executable, "-m", "srigl_np.train", "--device", "tpu"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device" in lines[0] and "'tpu'" in lines[0]


def _train_steps(model, steps=3, seed=0, device_name="cpu"):
    """Parameters (as NumPy) after ``steps`` SGD steps on random data."""
    rng = np.random.default_rng(seed)
    optimizer = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        x = backend.to_device(rng.standard_normal((8, 1, 28, 28)).astype(np.float32), device_name)
        y = rng.integers(0, 10, 8)
        _, grad = softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(grad, input_grad=False)
        optimizer.step(model.named_grads())
    return {k: to_numpy(v) for k, v in model.named_parameters().items()}


def test_to_cpu_is_a_no_op_that_keeps_training_identical():
    model = build("mlp", rng=np.random.default_rng(1))
    before = {k: id(v) for k, v in {**model.named_parameters(), **model.named_grads()}.items()}
    assert model.to("cpu") is model
    after = {k: id(v) for k, v in {**model.named_parameters(), **model.named_grads()}.items()}
    assert after == before
    reference = _train_steps(build("mlp", rng=np.random.default_rng(1)))
    moved = _train_steps(model)
    assert all(np.array_equal(moved[k], reference[k]) for k in reference)


def test_to_rejects_a_bad_device_name():
    with pytest.raises(ValueError, match="device must be"):
        Sequential(ReLU()).to("gpu")


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((2, 3, 7, 6), (3, 3), 1, 0), ((2, 3, 7, 6), (3, 2), 2, 1), ((1, 1, 5, 5), (5, 5), 1, 0),
    ((3, 2, 6, 6), (2, 2), 3, 2), ((1, 4, 4, 9), (1, 3), 2, 0),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_im2col_col2im_match_the_cython_kernels(shape, kernel, stride, padding, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    kh, kw = kernel
    cols = im2col_strided(x, kh, kw, stride, padding)
    assert np.array_equal(cols, im2col(x, kh, kw, stride, padding))
    # Non-contiguous input: the strided path needs no copy first.
    wide = rng.standard_normal(shape[:3] + (2 * shape[3],)).astype(dtype)
    assert np.array_equal(im2col_strided(wide[..., ::2], kh, kw, stride, padding),
                          im2col(np.ascontiguousarray(wide[..., ::2]), kh, kw, stride, padding))
    g = rng.standard_normal(cols.shape).astype(dtype)
    back = col2im_strided(g, shape, kh, kw, stride, padding)
    assert back.shape == shape and back.flags.c_contiguous and back.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(back, col2im(g, shape, kh, kw, stride, padding),
                               rtol=tolerance, atol=tolerance)


def test_build_run_of_a_config_without_device_uses_the_cpu(tmp_path):
    # Checkpoints written before --device existed hold no "device" in their config.
    args = train_module.make_parser().parse_args(
        ["--dataset", "embedded", "--epochs", "1", "--out", str(tmp_path)])
    config = train_config.config_from_args(args)
    assert config["device"] == "cpu"
    del config["device"]
    x_train, *_, model, optimizer, _, _, _ = train_module._build_run(config)
    assert type(x_train) is np.ndarray
    assert all(type(p) is np.ndarray for p in model.named_parameters().values())


# -- the device paths (fake CuPy everywhere, real CuPy on a GPU) -------------------------

def _layer_cases():
    return {
        "linear": (lambda rng: Linear(12, 5, rng=rng, dtype=np.float64), (4, 12)),
        "conv": (lambda rng: Conv2d(3, 4, 3, rng=rng, dtype=np.float64), (2, 3, 7, 6)),
        "conv-stride-padding": (lambda rng: Conv2d(2, 3, (3, 2), stride=2, padding=1,
                                                   rng=rng, dtype=np.float64), (2, 2, 7, 8)),
        "maxpool-tiled": (lambda rng: MaxPool2d(2), (2, 3, 6, 4)),
        "maxpool-overlapping": (lambda rng: MaxPool2d(3, stride=2), (2, 3, 7, 7)),
        "relu": (lambda rng: ReLU(), (3, 5)),
        "flatten": (lambda rng: Flatten(), (2, 3, 4, 4)),
        "dropout": (lambda rng: Dropout(0.4, rng=np.random.default_rng(5)), (6, 7)),
        "batchnorm1d": (lambda rng: BatchNorm1d(5, dtype=np.float64), (6, 5)),
        "batchnorm2d": (lambda rng: BatchNorm2d(3, dtype=np.float64), (4, 3, 3, 2)),
        "conv-grouped": (lambda rng: Conv2d(4, 6, 3, padding=1, groups=2, rng=rng,
                                            dtype=np.float64), (2, 4, 5, 5)),
        "conv-depthwise": (lambda rng: Conv2d(3, 3, 3, stride=2, groups=3, rng=rng,
                                              dtype=np.float64), (2, 3, 7, 6)),
        "global-avg-pool": (lambda rng: GlobalAvgPool2d(), (2, 3, 4, 5)),
        "sigmoid": (lambda rng: Sigmoid(), (3, 5)),
        "hardsigmoid": (lambda rng: Hardsigmoid(), (3, 5)),
        "hardswish": (lambda rng: Hardswish(), (3, 5)),
        "gelu": (lambda rng: GELU(), (3, 5)),
        "layernorm": (lambda rng: LayerNorm(5, dtype=np.float64), (2, 3, 5)),
        "residual": (lambda rng: Residual(
            Sequential(Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64),
                       BatchNorm2d(3, dtype=np.float64), ReLU()),
            Sequential(Conv2d(2, 3, 1, rng=rng, dtype=np.float64))), (2, 2, 4, 4)),
        "squeeze-excite": (lambda rng: SqueezeExcite(4, 2, rng=rng, dtype=np.float64),
                           (2, 4, 3, 3)),
        "attention": (lambda rng: MultiheadSelfAttention(6, 2, rng=rng, dtype=np.float64),
                      (2, 3, 6)),
    }


@pytest.mark.parametrize("case", list(_layer_cases()))
@pytest.mark.parametrize("training", [True, False])
def test_layer_forward_backward_match_numpy(device, case, training):
    name, atol = device
    make, shape = _layer_cases()[case]
    host, moved = make(np.random.default_rng(2)), make(np.random.default_rng(2)).to(name)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    y_host = host.forward(x.copy(), training)
    y_device = moved.forward(backend.to_device(x, name), training)
    assert_matches(f"{case} forward", y_device, y_host, atol)
    g = rng.standard_normal(y_host.shape)
    grad_host = host.backward(g.copy())
    grad_device = moved.backward(backend.to_device(g, name))
    # col2im sums overlapping windows in another order on the strided path.
    tolerance = max(atol, 1e-12) if case.startswith(("conv", "residual")) else atol
    assert_matches(f"{case} input grad", grad_device, grad_host, tolerance)
    for key in host.grads:
        assert_matches(f"{case} grad {key}", moved.grads[key], host.grads[key], tolerance)
    for key in host.buffers:
        assert_matches(f"{case} buffer {key}", moved.buffers[key], host.buffers[key], atol)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_model_training_steps_match_numpy(device, model_name):
    name, atol = device
    host = _train_steps(build(model_name, rng=np.random.default_rng(9)), steps=2)
    moved = _train_steps(build(model_name, rng=np.random.default_rng(9), device=name),
                         steps=2, device_name=name)
    for key, value in host.items():
        # float32 col2im sums overlaps in another order on the strided (device) path.
        if model_name == "mlp" and atol == 0.0:
            assert np.array_equal(moved[key], value), key
        else:
            np.testing.assert_allclose(moved[key], value, rtol=1e-4, atol=max(atol, 1e-6),
                                       err_msg=key)


@pytest.mark.parametrize("optimizer_class, kwargs", [
    (SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (AdamW, {"weight_decay": 1e-2}),
])
def test_optimizer_steps_match_numpy(device, optimizer_class, kwargs):
    name, atol = device
    rng = np.random.default_rng(4)
    host = {"w": rng.standard_normal((5, 4)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32)}
    moved = {k: backend.to_device(v, name) for k, v in host.items()}
    opt_host = optimizer_class(host, lr=0.1, **kwargs)
    opt_device = optimizer_class(moved, lr=0.1, **kwargs)
    for _ in range(2):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()}
        opt_host.step(grads)
        opt_device.step({k: backend.to_device(v, name) for k, v in grads.items()})
    for key in host:
        assert_matches(f"param {key}", moved[key], host[key], atol)
        for state_key, buffer in opt_host.state[key].items():
            assert_matches(f"state {key}/{state_key}", opt_device.state[key][state_key],
                           buffer, atol)
    reloaded = optimizer_class({k: v.copy() for k, v in moved.items()}, lr=0.1, **kwargs)
    reloaded.load_state_dict(opt_host.state_dict())
    for key in host:
        for state_key, buffer in opt_host.state[key].items():
            assert_matches(f"loaded {key}/{state_key}", reloaded.state[key][state_key],
                           buffer, 0.0)


@pytest.mark.parametrize("method", ["srigl", "rigl", "set"])
def test_dst_updates_on_device_give_the_numpy_masks(device, method):
    name, _ = device
    rng = np.random.default_rng(6)
    shape = (12, 3, 2, 2)
    mask = dst.constant_fan_in_mask(shape, 0.7, rng)
    weight = (rng.standard_normal(shape) * mask).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    if method == "srigl":
        def update(w, m, g):
            return dst.srigl_update(w, m, g, drop_fraction=0.3, sparsity=0.7, gamma_sal=0.5)
    elif method == "rigl":
        def update(w, m, g):
            return dst.rigl_update(w, m, g, drop_fraction=0.3)
    else:
        def update(w, m, g):
            return dst.set_update(w, m, drop_fraction=0.3, rng=np.random.default_rng(7))
    host = update(weight, mask, grad)
    moved = update(*(backend.to_device(a, name) for a in (weight, mask, grad)))
    for field in ("mask", "weight", "pruned", "grown"):
        assert_matches(field, getattr(moved, field), getattr(host, field), 0.0)
    assert type(moved.ablated) is np.ndarray
    assert np.array_equal(moved.ablated, host.ablated) and moved.fan_in == host.fan_in
    dst.check_invariants(moved.weight, moved.mask, fan_in=moved.fan_in, ablated=moved.ablated)


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "meta"}


@pytest.mark.slow
def test_one_epoch_of_training_on_the_device(device, tmp_path):
    name, atol = device
    args = ["--dataset", "embedded", "--epochs", "1", "--batch-size", "128", "--lr", "0.05",
            "--method", "srigl", "--delta", "10", "--seed", "2"]
    parser = train_module.make_parser()
    # The device trains masked (the condensed path is the CPU's): so does the reference.
    cpu = train_config.config_from_args(parser.parse_args(
        args + ["--out", str(tmp_path / "c"), "--compute", "masked"]))
    gpu = train_config.config_from_args(parser.parse_args(
        args + ["--out", str(tmp_path / "g"), "--device", name]))
    metrics = train_module.train(gpu, log=lambda line: None)
    assert json.load(open(tmp_path / "g" / "metrics.json"))["config"]["device"] == name
    assert 0.5 < metrics["test_accuracy"] <= 1.0   # far above chance (0.1)
    records = [json.loads(line) for line in open(tmp_path / "g" / "audit.jsonl")]
    assert records and all(r["invariants"] == "ok" for r in records)
    if atol == 0.0:
        # Same arithmetic as the NumPy path: the whole run is bit-identical to the CPU's.
        reference = train_module.train(cpu, log=lambda line: None)
        assert metrics["epochs"][0]["loss"] == reference["epochs"][0]["loss"]
        a = _arrays(tmp_path / "c" / "checkpoint.npz")
        b = _arrays(tmp_path / "g" / "checkpoint.npz")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_model_checkpoint_round_trip_between_devices(device, tmp_path):
    from srigl_np.formats.checkpoint import load_checkpoint, save_checkpoint
    from srigl_np.dst.sparsity import DynamicSparsity
    name, _ = device

    def run(device_name):
        model = build("cnn", rng=np.random.default_rng(8), device=device_name)
        optimizer = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
        sparsity = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.8, delta=1,
                                   t_end=10, seed=1)
        return model, optimizer, sparsity

    model, optimizer, sparsity = run(name)
    assert all(is_cupy_array(m) for m in sparsity.masks.values())
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"epoch": 0, "step": 0, "optimizer_step_count": 0}, model,
                    optimizer, sparsity)
    host_model, host_optimizer, host_sparsity = run("cpu")
    load_checkpoint(path, host_model, host_optimizer, host_sparsity)
    host_state = host_model.state_dict()
    for key, value in model.state_dict().items():
        assert np.array_equal(to_numpy(value), host_state[key]), key
    back_model, back_optimizer, back_sparsity = run(name)
    load_checkpoint(path, back_model, back_optimizer, back_sparsity)
    for key, value in back_sparsity.masks.items():
        assert is_cupy_array(value) and np.array_equal(to_numpy(value),
                                                       to_numpy(sparsity.masks[key]))
