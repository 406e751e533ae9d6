"""The paper's architectures (srigl_np.nn.architectures) at small sizes, in float64:
names equal to the PyTorch state_dict keys, forward and backward equal to torch's in
evaluation and training mode with sparse masks, ablated neurons and non-trivial
BatchNorm statistics, finite-difference gradients, and DynamicSparsity over them."""

import numpy as np
import pytest

from srigl_np.backend import is_cupy_array, to_device, to_numpy
from srigl_np.dst import constant_fan_in_mask
from srigl_np.dst.sparsity import DynamicSparsity, sparse_parameter_names
from srigl_np.nn.architectures import (ARCHITECTURES, INPUT_SHAPES, SMALL_SIZES,
                                       build_architecture)
from srigl_np.nn.losses import softmax_cross_entropy
from srigl_np.nn.optim import SGD

import fake_cupy
from gradcheck import assert_close, numeric_grad

device = fake_cupy.device   # the fixture: fake CuPy, and real CuPy where a GPU is

# name: (small sizes, input shape with a batch of 2)
SMALL = {name: (sizes, (2, *shape)) for name, (sizes, shape) in SMALL_SIZES.items()}
# Tinier still for finite differences (two forwards per sampled entry; the global mean
# takes any image size, where torch's avg_pool2d(4 or 8) wants 32x32).
TINY = {
    "cifar_resnet18": (dict(width=2, blocks=(1, 1, 1, 1), num_classes=3), (2, 3, 16, 16)),
    "wide_resnet22": (dict(depth=10, widen_factor=1, num_classes=3, drop_rate=0.0),
                      (2, 3, 8, 8)),
    # 64x64: a 2x2 last map, so training-mode BatchNorm sees 8 values per channel.
    "resnet50": (dict(width=2, layers=(1, 1, 1, 1), num_classes=3), (2, 3, 64, 64)),
    # The first blocks: with and without expansion, squeeze-excite and residual.
    "mobilenet_v3_large": (dict(width_mult=0.25, blocks=5, num_classes=3, dropout=0.0),
                           (2, 3, 32, 32)),
    "mobilenet_v3_small": (dict(width_mult=0.25, blocks=4, num_classes=3, dropout=0.0),
                           (2, 3, 32, 32)),
    "vit_b_16": (dict(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8,
                      mlp_dim=12, num_classes=3), (2, 3, 8, 8)),
}


@pytest.fixture
def torch():
    """torch on one thread: its float64 depthwise convolutions run ten times faster
    (0.03 against 0.4 s for the small MobileNet) than on two busy cores."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def build(name, sizes, seed=0):
    return build_architecture(name, rng=np.random.default_rng(seed), dtype=np.float64,
                              **sizes)


def perturb(model, rng, sparsity=0.9, ablate=True):
    """Sparse masks of constant fan-in on every sparse weight, a neuron ablated (its row
    zero) in every layer of more than two (with ``ablate``), random biases and BatchNorm parameters and
    running statistics that are not the identity. Returns the masks."""
    params, buffers = model.named_parameters(), model.named_buffers()
    masks = {}
    for name in sparse_parameter_names(model):
        weight = params[name]
        ablated = (rng.choice(weight.shape[0], 1, replace=False)
                   if ablate and weight.shape[0] > 2 else ())
        masks[name] = constant_fan_in_mask(weight.shape, sparsity, rng, ablated=ablated)
        weight *= masks[name]
    for name, array in params.items():
        if name in masks:
            continue
        if name.endswith("weight") and array.ndim == 1:   # BatchNorm and LayerNorm scales
            array[...] = rng.uniform(0.5, 1.5, array.shape)
        else:   # biases, ViT's class token and position embedding
            array[...] = 0.1 * rng.standard_normal(array.shape)
    for name, array in buffers.items():
        array[...] = (rng.uniform(0.5, 2.0, array.shape) if name.endswith("running_var")
                      else 0.1 * rng.standard_normal(array.shape))
    return masks


def relative(mine, theirs):
    return float(np.abs(mine - theirs).max() / max(np.abs(theirs).max(), 1e-300))


def assert_grads_close(mine, theirs, rtol=1e-9):
    """Every gradient of ``theirs`` ({key: array}) within ``rtol`` of its largest entry.
    Some are zero up to rounding (a bias right before a training-mode BatchNorm): those
    are measured against a thousandth of the model's largest gradient."""
    scale = max(float(np.abs(g).max()) for g in theirs.values())
    for key, grad in theirs.items():
        error = np.abs(mine[key] - grad).max()
        assert error <= rtol * max(np.abs(grad).max(), 1e-3 * scale), key


@pytest.mark.parametrize("name", sorted(SMALL))
def test_names_are_the_torch_state_dict_keys(name, torch):
    import torch_models
    sizes, _ = SMALL[name]
    model = build(name, sizes)
    module = torch_models.BUILDERS[name](**sizes)
    theirs = torch_models.torch_state(module)
    ours = {**model.named_parameters(), **model.named_buffers()}
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert sorted(model.named_parameters()) == sorted(k for k, _ in module.named_parameters())
    # Every convolution and linear weight is sparse, nothing else.
    nn = torch_models.nn
    sparse = {f"{k}.weight" for k, m in module.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    sparse |= {f"{k}.in_proj_weight" for k, m in module.named_modules()
               if isinstance(m, nn.MultiheadAttention)}
    assert set(sparse_parameter_names(model)) == sparse


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_and_backward_match_torch(name, torch):
    import torch_models
    sizes, shape = SMALL[name]
    rng = np.random.default_rng(1)
    model = build(name, sizes)
    perturb(model, rng)
    module = torch_models.load_ours_into_torch(model, torch_models.BUILDERS[name](**sizes)
                                               .double())
    x = rng.standard_normal(shape)
    # Evaluation: running statistics.
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative(model.forward(x.copy(), False), expected) <= 1e-10
    # Training: batch statistics, gradients of everything, running statistics updated.
    module.train()
    y = model.forward(x.copy(), True)
    r = rng.standard_normal(y.shape)
    grad_x = model.backward(r.copy())
    x_torch = torch.from_numpy(x.copy()).requires_grad_()
    y_torch = module(x_torch)
    y_torch.backward(torch.from_numpy(r))
    assert relative(y, y_torch.detach().numpy()) <= 1e-10
    # torch's hardsigmoid backward multiplies by 1/6 as a float32 even in float64 (a
    # relative 3e-8): torchvision's MobileNet gradients are that close to exact ones.
    rtol = 1e-7 if type(module).__module__.startswith("torchvision.models.mobilenet") else 1e-9
    assert relative(grad_x, x_torch.grad.numpy()) <= rtol
    assert_grads_close(model.named_grads(),
                       {key: p.grad.numpy() for key, p in module.named_parameters()}, rtol)
    theirs = torch_models.torch_state(module)
    for key, buffer in model.named_buffers().items():
        assert relative(buffer, theirs[key]) <= 1e-10, key


@pytest.mark.parametrize("name", sorted(TINY))
def test_gradients_match_finite_differences(name):
    """Three sampled entries of the input and of every parameter, central differences."""
    sizes, shape = TINY[name]
    rng = np.random.default_rng(2)
    model = build(name, sizes)
    # No ablated neurons: a zero channel is constant after its BatchNorm, and a max-pool
    # over ties is not differentiable (the torch comparison covers ablation).
    perturb(model, rng, sparsity=0.5, ablate=False)
    x = rng.standard_normal(shape)
    y = model.forward(x, True)
    r = rng.standard_normal(y.shape)
    grad_x = model.backward(r.copy())
    analytic = {k: g.copy() for k, g in model.named_grads().items()}

    def loss():
        return float(np.sum(model.forward(x, True) * r))

    for key, array, grad in [("input", x, grad_x)] + [
            (k, p, analytic[k]) for k, p in model.named_parameters().items()]:
        picks = rng.choice(array.size, min(3, array.size), replace=False)
        numeric = numeric_grad(loss, array, entries=picks)
        assert_close(key, grad.reshape(-1)[picks], numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_srigl_update_keeps_constant_fan_in(name):
    sizes, shape = TINY[name]
    model = build(name, sizes)
    optimizer = SGD(model.named_parameters(), lr=0.05, momentum=0.9)
    ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.8, delta=1, alpha=0.5,
                         t_end=10, gamma_sal=0.3, seed=3)
    params = model.named_parameters()
    assert list(ds.masks) == sparse_parameter_names(model)
    assert set(ds.masks) <= set(params)
    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal(shape), rng.integers(0, 3, shape[0])
    before = {k: m.copy() for k, m in ds.masks.items()}
    for step in range(2):   # step 1 is an update step
        logits = model.forward(x, True)
        _, grad = softmax_cross_entropy(logits, labels)
        model.backward(grad)
        grads = model.named_grads()
        if ds.before_step(step, grads):
            optimizer.step(grads)
        ds.after_step(step, grads)
    assert any((before[k] != m).any() for k, m in ds.masks.items())
    for key, mask in ds.masks.items():
        counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
        active = counts[counts > 0]
        assert active.size and (active == active[0]).all(), key
        assert not params[key][~mask].any(), key


def test_unknown_architecture_and_bad_sizes_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="name must be one of"):
        build_architecture("resnet19", rng=rng)
    with pytest.raises(ValueError, match="depth must be 6"):
        build_architecture("wide_resnet22", rng=rng, depth=20)
    with pytest.raises(ValueError, match="blocks must hold 4"):
        build_architecture("cifar_resnet18", rng=rng, blocks=(2, 2))
    with pytest.raises(TypeError, match="rng must be"):
        build_architecture("resnet50", rng=0)
    with pytest.raises(ValueError, match=r"blocks must be in \[1, 11\]"):
        build_architecture("mobilenet_v3_small", rng=rng, blocks=12)
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        build_architecture("mobilenet_v3_large", rng=rng, width_mult=0)
    with pytest.raises(ValueError, match=r"patch_size must divide image_size \(30\)"):
        build_architecture("vit_b_16", rng=rng, image_size=30, patch_size=4)
    assert set(ARCHITECTURES) == {"cifar_resnet18", "wide_resnet22", "resnet50",
                                  "mobilenet_v3_large", "mobilenet_v3_small", "vit_b_16"}
    assert set(INPUT_SHAPES) == set(SMALL_SIZES) == set(ARCHITECTURES)


def test_wide_resnet_dropout_is_seeded_and_off_in_evaluation():
    model = build("wide_resnet22", dict(depth=10, widen_factor=1, drop_rate=0.3))
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32))
    model.set_rng(np.random.default_rng(6))
    first = model.forward(x, True)
    model.set_rng(np.random.default_rng(6))
    np.testing.assert_array_equal(model.forward(x, True), first)
    assert not np.allclose(model.forward(x, True), first)
    np.testing.assert_array_equal(model.forward(x, False), model.forward(x, False))
    # The output is log-probabilities, as the authors' forward returns.
    np.testing.assert_allclose(np.exp(first).sum(axis=1), 1.0)


# Parameter counts of the full-size models: torchvision's published ``num_params``
# (its weights' metadata), kuangliu's ResNet-18 count, and WRN-22-2 as counted from the
# torch.nn rewrite of the authors' module (tests/torch_models.py).
FULL_SIZE_PARAMS = {"resnet50": 25_557_032, "mobilenet_v3_large": 5_483_032,
                    "mobilenet_v3_small": 2_542_856, "cifar_resnet18": 11_173_962,
                    "wide_resnet22": 1_079_642, "vit_b_16": 86_567_656}


@pytest.mark.parametrize("name", sorted(FULL_SIZE_PARAMS))
def test_full_size_models_have_the_published_parameter_counts(name):
    model = build_architecture(name, rng=np.random.default_rng(0))
    assert sum(p.size for p in model.named_parameters().values()) == FULL_SIZE_PARAMS[name]


def test_make_divisible_and_squeeze_widths_are_torchvisions():
    from srigl_np.nn.mobilenet import make_divisible
    assert [make_divisible(v) for v in (16 * 0.25, 72 * 0.75, 960 * 0.35, 1280)] == [
        8, 56, 336, 1280]
    assert make_divisible(11) == 16 and make_divisible(3.5) == 8   # up from 90%, floor 8
    model = build_architecture("mobilenet_v3_large", rng=np.random.default_rng(0))
    params = model.named_parameters()
    # features.0 is the stem; features.4 is the 4th block: 24 -> 72 expanded, squeeze
    # _make_divisible(72 // 4) = 24; features.5: 40 -> 120, squeeze 32.
    assert params["features.4.block.2.fc1.weight"].shape == (24, 72, 1, 1)
    assert params["features.5.block.2.fc1.weight"].shape == (32, 120, 1, 1)
    assert params["features.5.block.1.0.weight"].shape == (120, 1, 5, 5)   # depthwise
    assert params["classifier.0.weight"].shape == (1280, 960)


@pytest.mark.parametrize("name", sorted(TINY))
def test_backward_without_input_gradient_gives_the_same_parameter_gradients(name):
    sizes, shape = TINY[name]
    model = build(name, sizes)
    x = np.random.default_rng(7).standard_normal(shape)
    y = model.forward(x, True)
    r = np.random.default_rng(8).standard_normal(y.shape)
    model.backward(r.copy())
    full = {k: g.copy() for k, g in model.named_grads().items()}
    model.forward(x, True)
    assert model.backward(r.copy(), input_grad=False) is None
    for key, grad in model.named_grads().items():
        np.testing.assert_allclose(grad, full[key], rtol=1e-12, atol=1e-300, err_msg=key)


@pytest.mark.parametrize("name", ["resnet50", "vit_b_16"])
def test_torch_weights_load_into_ours(name, torch):
    """load_torch_into_ours: torch's own initialisation, then equal evaluation outputs."""
    import torch_models
    sizes, shape = SMALL[name]
    torch.manual_seed(0)
    module = torch_models.BUILDERS[name](**sizes).double().eval()
    model = torch_models.load_torch_into_ours(module, build(name, sizes, seed=1))
    x = np.random.default_rng(9).standard_normal(shape)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative(model.forward(x, False), expected) <= 1e-10


@pytest.mark.parametrize("name", sorted(TINY))
def test_float32_models_stay_float32_and_match_float64(name):
    """Same seed, same (rounded) weights: float32 follows float64 to float32 precision,
    and no array of the model or its outputs and gradients turns float64."""
    sizes, shape = TINY[name]
    single = build_architecture(name, rng=np.random.default_rng(0), **sizes)
    double = build(name, sizes)
    x = np.random.default_rng(10).standard_normal(shape)
    for training in (False, True):
        y32, y64 = single.forward(x.astype(np.float32), training), double.forward(x, training)
        assert y32.dtype == np.float32
        assert relative(y32, y64) <= 1e-4
    grad_x = single.backward(np.ones(y32.shape, np.float32))
    assert grad_x.dtype == np.float32
    arrays = {**single.named_parameters(), **single.named_grads(), **single.named_buffers()}
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}


@pytest.mark.parametrize("name", sorted(TINY))
def test_architectures_run_on_the_device(device, name):
    """``to("cuda")`` reaches every array of the nested blocks; forward and backward
    follow the host (the device's convolutions sum in another order: not bit-equal)."""
    device_name, _ = device
    sizes, shape = TINY[name]
    host, moved = build(name, sizes), build(name, sizes).to(device_name)
    arrays = {**moved.named_parameters(), **moved.named_grads(), **moved.named_buffers()}
    assert all(is_cupy_array(a) for a in arrays.values())
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape)
    for training in (False, True):
        y_host = host.forward(x.copy(), training)
        y_device = moved.forward(to_device(x, device_name), training)
        assert relative(to_numpy(y_device), y_host) <= 1e-10
    g = rng.standard_normal(y_host.shape)
    grad_host = host.backward(g.copy())
    assert relative(to_numpy(moved.backward(to_device(g, device_name))), grad_host) <= 1e-9
    assert_grads_close({k: to_numpy(g) for k, g in moved.named_grads().items()},
                       host.named_grads())


def test_torchvision_is_the_reference_where_it_imports(torch):
    """With torchvision installed (CI installs 0.28.0), the ImageNet models are checked
    against torchvision's own modules, not against a rewrite."""
    import torch_models
    if torch_models.tv_models is None:
        pytest.skip("torchvision is not installed")
    for name in ("mobilenet_v3_large", "mobilenet_v3_small", "vit_b_16"):
        module = torch_models.BUILDERS[name](**SMALL[name][0])
        assert type(module).__module__.startswith("torchvision."), name
    assert type(torch_models.resnet50(layers=(1, 1, 1, 1))).__module__.startswith("torchvision.")


def test_resnet50_matches_torchvisions_bottlenecks(torch):
    """Full width (64), one bottleneck per stage, a 32x32 image: torchvision's ResNet
    class with our 90% masks, ablated rows and BatchNorm statistics, float64 eval."""
    import torch_models
    if torch_models.tv_models is None:
        pytest.skip("torchvision is not installed")
    sizes = dict(layers=(1, 1, 1, 1), num_classes=10)
    rng = np.random.default_rng(3)
    model = build("resnet50", sizes)
    perturb(model, rng)
    module = torch_models.load_ours_into_torch(
        model, torch_models.resnet50(**sizes).double()).eval()
    assert type(module).__module__ == "torchvision.models.resnet"
    x = rng.standard_normal((2, 3, 32, 32))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert relative(model.forward(x, False), expected) <= 1e-10
