"""condense() of nested models — residual blocks (projection and identity shortcuts,
pre-activation), inverted residuals with depthwise convolution and squeeze-excite, a
ViT-like token model with attention — against our own evaluation forward of the masked
model, with random 90% constant fan-in masks, ablated neurons and BatchNorm statistics
that are not the identity; the file format's nesting and old versions; input scales."""

import json
import os

import numpy as np
import pytest

import fake_cupy
from srigl_np.backend import is_cupy_array, to_numpy
from srigl_np.inference import graph
from srigl_np.inference.condensed_model import CondensedModel, load
from srigl_np.inference.condensing import condense
from srigl_np.nn.activations import GELU, Hardswish, LogSoftmax
from srigl_np.nn.attention import MultiheadSelfAttention
from srigl_np.nn.blocks import Residual, SqueezeExcite
from srigl_np.nn.layers import Conv2d, Dropout, Flatten, Layer, Linear, ReLU, Sequential, prefixed
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from srigl_np.nn.pooling import GlobalAvgPool2d, MaxPool2d
from srigl_np.nn.tokens import ClassToken, PatchTokens, PositionEmbedding, SelectToken

DATA = os.path.join(os.path.dirname(__file__), "data")
device = fake_cupy.device   # the fixture: fake CuPy, and real CuPy where a GPU is


def constant_fan_in_masks(model, rng, density=0.1, ablate=0.2, keep_dense=()):
    """Random constant fan-in masks (k = round(density * fan-in), at least 1) on every
    sparse weight, a fraction ``ablate`` of each one's rows empty (none in the last
    weight, the classifier); the weights multiplied by them; every bias random."""
    weights = [(prefixed(path, name), layer, name) for path, layer in model.named_layers()
               for name in layer.sparse_weights]
    masks = {}
    for i, (full_name, layer, name) in enumerate(weights):
        weight = layer.params[name]
        n_out, fan = weight.shape[0], int(np.prod(weight.shape[1:]))
        if full_name in keep_dense:
            masks[full_name] = np.ones(weight.shape, dtype=bool)
            continue
        k = max(1, round(density * fan))
        order = np.argsort(rng.random((n_out, fan)), axis=1)[:, :k]
        mask = np.zeros((n_out, fan), dtype=bool)
        mask[np.arange(n_out)[:, None], order] = True
        if i < len(weights) - 1:
            mask[rng.random(n_out) < ablate] = False
        masks[full_name] = mask.reshape(weight.shape)
        weight *= masks[full_name]
    for path, layer in model.named_layers():
        for name, value in layer.params.items():
            if name.endswith("bias") and "proj" not in name:
                value[...] = 0.3 * rng.standard_normal(value.shape)
        if isinstance(layer, (MultiheadSelfAttention,)):
            for name in ("in_proj_bias", "out_proj.bias"):
                layer.params[name][...] = 0.1 * rng.standard_normal(layer.params[name].shape)
    return masks


def perturb_norms(model, rng):
    """BatchNorm running statistics and affine, LayerNorm affine, tokens: not identity."""
    for _, layer in model.named_layers():
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            n = layer.num_features
            layer.buffers["running_mean"][...] = 0.5 * rng.standard_normal(n)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, n)
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, n)
            layer.params["bias"][...] = 0.5 * rng.standard_normal(n)
        elif isinstance(layer, LayerNorm):
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, layer.normalized_shape)
            layer.params["bias"][...] = 0.3 * rng.standard_normal(layer.normalized_shape)
        elif isinstance(layer, ClassToken):
            layer.params["class_token"][...] = rng.standard_normal(layer.dim)


def bottleneck_net(rng):
    """A stem, a Bottleneck with a strided projection shortcut (BatchNorm everywhere), a
    basic block with an identity shortcut, global pooling, a classifier."""
    def bn_conv(cin, cout, k, stride=1, padding=0):
        return [Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False, rng=rng),
                BatchNorm2d(cout)]

    bottleneck = Residual(
        Sequential(*bn_conv(8, 6, 1), ReLU(), *bn_conv(6, 6, 3, 2, 1), ReLU(),
                   *bn_conv(6, 12, 1), names=["conv1", "bn1", "relu1", "conv2", "bn2",
                                              "relu2", "conv3", "bn3"]),
        Sequential(*bn_conv(8, 12, 1, 2)), body_name="", shortcut_name="downsample")
    basic = Residual(Sequential(*bn_conv(12, 12, 3, 1, 1), ReLU(), *bn_conv(12, 12, 3, 1, 1)))
    return Sequential(*bn_conv(3, 8, 3, 1, 1), ReLU(), MaxPool2d(2), bottleneck, ReLU(),
                      basic, ReLU(), GlobalAvgPool2d(), Linear(12, 5, rng=rng))


def preactivation_net(rng):
    """The authors' WRN pattern: bn -> relu -> conv blocks (BatchNorms that follow no
    conv), dropout between the convolutions, log_softmax out."""
    block = Residual(Sequential(BatchNorm2d(8), ReLU(), Conv2d(8, 8, 3, padding=1, rng=rng),
                                BatchNorm2d(8), ReLU(), Dropout(0.3),
                                Conv2d(8, 8, 3, padding=1, rng=rng)))
    return Sequential(Conv2d(3, 8, 3, padding=1, rng=rng), block, BatchNorm2d(8), ReLU(),
                      GlobalAvgPool2d(), Flatten(), Linear(8, 6, rng=rng), LogSoftmax())


def inverted_residual_net(rng):
    """MobileNet-V3's pieces: hardswish stem, an inverted residual (1x1 expand, depthwise
    3x3, squeeze-excite, 1x1 project) with an identity shortcut, and the classifier."""
    def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
        layers = [Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups,
                         bias=False, rng=rng), BatchNorm2d(cout)]
        return layers + ([Hardswish()] if act else [])

    block = Residual(Sequential(*conv_bn(8, 24, 1), *conv_bn(24, 24, 3, groups=24),
                                SqueezeExcite(24, 8, rng=rng), *conv_bn(24, 8, 1, act=False)))
    return Sequential(*conv_bn(3, 8, 3, stride=2), block, *conv_bn(8, 32, 1),
                      GlobalAvgPool2d(), Linear(32, 20, rng=rng), Hardswish(), Dropout(0.2),
                      Linear(20, 7, rng=rng))


def vit_net(rng, dim=16, heads=4, patch=4, image=12):
    """ViT-B/16 in miniature: patch convolution, class token, position embedding, two
    encoder layers (pre-norm attention and GELU MLP residuals), final LayerNorm, head."""
    tokens = (image // patch) ** 2 + 1

    def encoder_layer():
        attention = Residual(Sequential(LayerNorm(dim, eps=1e-6),
                                        MultiheadSelfAttention(dim, heads, rng=rng),
                                        Dropout(0.1), names=["ln_1", "self_attention", ""]),
                             body_name="")
        mlp = Residual(Sequential(LayerNorm(dim, eps=1e-6),
                                  Sequential(Linear(dim, 4 * dim, rng=rng), GELU(),
                                             Dropout(0.1), Linear(4 * dim, dim, rng=rng),
                                             Dropout(0.1)),
                                  names=["ln_2", "mlp"]), body_name="")
        return Sequential(attention, mlp, names=["", ""])

    return Sequential(Conv2d(3, dim, patch, stride=patch, rng=rng), PatchTokens(),
                      ClassToken(dim), PositionEmbedding(tokens, dim, rng=rng), Dropout(0.1),
                      encoder_layer(), encoder_layer(), LayerNorm(dim, eps=1e-6),
                      SelectToken(0), Linear(dim, 10, rng=rng),
                      names=["conv_proj", "", "", "", "", "layer_0", "layer_1", "ln", "",
                             "head"])


NETS = {"bottleneck": (bottleneck_net, (3, 3, 12, 12)),
        "preactivation": (preactivation_net, (3, 3, 8, 8)),
        "inverted_residual": (inverted_residual_net, (3, 3, 10, 10)),
        "vit": (vit_net, (3, 3, 12, 12))}


def build(name, seed):
    rng = np.random.default_rng(seed)
    make, shape = NETS[name]
    model = make(rng)
    masks = constant_fan_in_masks(model, rng)
    perturb_norms(model, rng)
    return model, masks, rng.standard_normal(shape).astype(np.float32)


def assert_close(got, expected):
    assert got.shape == expected.shape and got.dtype == np.float32
    error = np.abs(got.astype(np.float64) - expected).max()
    assert error <= 1e-4 * np.abs(expected).max(), (error, np.abs(expected).max())


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_condensed_nested_models_compute_the_eval_forward(name, seed, tmp_path):
    model, masks, x = build(name, seed)
    expected = model.forward(x, False).astype(np.float64)
    condensed = condense(model, masks=masks)
    assert all(e["result"] == "condensed" and e["structure"] == "mask"
               for e in condensed.report)
    assert len(condensed.report) == len(masks)
    assert_close(condensed.logits(x), expected)
    condensed.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.logits(x), condensed.logits(x))
    assert [path for path, _ in loaded.named_stages()] == [
        path for path, _ in condensed.named_stages()]


@pytest.mark.parametrize("name", ["bottleneck", "inverted_residual", "vit"])
def test_a_nested_model_on_the_device_computes_what_it_does_on_the_cpu(device, name):
    device_name, atol = device
    model, masks, x = build(name, 12)
    condensed = condense(model, masks=masks)
    on_device = condensed.to(device_name)
    assert all(stage.device in ("cpu", "cuda:0") for _, stage in on_device.named_stages())
    logits = on_device.logits(x)
    assert is_cupy_array(logits)
    np.testing.assert_allclose(to_numpy(logits), condensed.logits(x), rtol=1e-5,
                               atol=max(atol, 1e-5))
    back = on_device.to("cpu")
    assert not any(is_cupy_array(v) for _, stage in back.named_stages()
                   for v in vars(stage).values())
    np.testing.assert_array_equal(back.logits(x), condensed.logits(x))


def test_ablated_channels_leave_a_residual_body_and_come_back_at_its_add():
    model, masks, x = build("bottleneck", 3)
    body = model.layers[4].body
    # conv1's rows 0 and 1 ablated (their constant: bn1's shift through ReLU, > 0 here),
    # conv3's row 5 ablated: the channel stays, restored at the body's end.
    for name, rows in (("conv1", [0, 1]), ("conv3", [5])):
        masks[f"4.{name}.weight"][rows] = False
        body[name].params["weight"][rows] = 0.0
    body["bn1"].params["bias"][:2] = 2.0
    condensed = condense(model, masks=masks)
    residual = next(s for s in condensed.stages if isinstance(s, graph.Residual))
    conv1, conv2 = [s for s in residual.body if s.kind == "conv2d"][:2]
    # conv2 is padded: the two removed channels (constant > 0) come back before it.
    assert conv1.n_active <= 4 and conv2.in_channels == 6
    assert residual.body[-1].kind == "scatter" and residual.body[-1].constants.size == 12
    assert residual.shortcut[0].kind == "conv2d"
    assert_close(condensed.logits(x), model.forward(x, False).astype(np.float64))


def test_ablated_neurons_of_the_mlp_fold_into_the_next_layer_of_the_token_model():
    model, masks, x = build("vit", 4)
    name = "layer_0.mlp.0.weight"
    masks[name][:5] = False
    model.named_parameters()[name][:5] = 0.0
    condensed = condense(model, masks=masks)
    mlp = [s for s in condensed.stages if isinstance(s, graph.Residual)][1]
    first, second = [s for s in mlp.body if s.kind == "linear"]
    assert first.n_active <= 59 and second.n_in == first.n_active
    assert mlp.body[-1].kind != "scatter" or mlp.body[-1].axis == -1
    attention = next(s for s in mlp.body + [st for r in condensed.stages
                                             if isinstance(r, graph.Residual)
                                             for st in r.body]
                     if isinstance(s, graph.Attention))
    assert attention.in_proj[0].n_out == 48 and attention.in_proj[0].k == 2
    assert_close(condensed.logits(x), model.forward(x, False).astype(np.float64))


def test_attention_by_blocks_of_heads_computes_the_same(monkeypatch):
    model, masks, x = build("vit", 16)
    condensed = condense(model, masks=masks)
    whole = condensed.logits(x)
    monkeypatch.setattr(graph, "SCORES_BLOCK_BYTES", 4 * 10 * 10 * 3)   # 3 of 12 heads
    np.testing.assert_allclose(condensed.logits(x), whole, rtol=1e-6, atol=1e-6)
    assert_close(condensed.logits(x), model.forward(x, False).astype(np.float64))


def test_attention_heads_split_over_two_threads_give_the_same_bits(monkeypatch):
    model, masks, x = build("vit", 16)
    condensed = condense(model, masks=masks)
    halves = []
    real = graph._attention_heads
    monkeypatch.setattr(graph, "_attention_heads",
                        lambda *args: halves.append(args[5:7]) or real(*args))
    one = condensed.logits(x, 1)
    assert all(last - first == 12 for first, last in halves)    # all heads, one thread
    halves.clear()
    np.testing.assert_array_equal(condensed.logits(x, 2), one)
    assert halves and all(last - first == 6 for first, last in halves)   # two halves


def test_depthwise_and_squeeze_excite_are_condensed_with_their_groups():
    model, masks, x = build("inverted_residual", 5)
    condensed = condense(model, masks=masks)
    residual = next(s for s in condensed.stages if isinstance(s, graph.Residual))
    depthwise = [s for s in residual.body if s.kind == "conv2d"][1]
    # One tap per output channel, of its own channel: channels increase with the rows.
    channels = depthwise.indices[:, 0].astype(int) // 9
    assert depthwise.k == 1 and (np.diff(channels) > 0).all()
    assert channels.max() < depthwise.in_channels <= 24
    squeeze = next(s for s in residual.body if isinstance(s, graph.SqueezeExcite))
    assert [s.kind for s in squeeze.gate][-1] in ("hardsigmoid", "scatter")
    assert_close(condensed.logits(x), model.forward(x, False).astype(np.float64))


def test_a_dense_first_conv_and_masks_from_the_weights_alone():
    model, masks, x = build("bottleneck", 6)
    condensed = condense(model, warn=False)      # structure from weight != 0
    assert {e["structure"] for e in condensed.report} == {"weight != 0"}
    assert_close(condensed.logits(x), model.forward(x, False).astype(np.float64))


def test_a_ragged_depthwise_conv_is_padded_with_its_cost_reported():
    model, masks, x = build("inverted_residual", 7)
    name = "3.body.3.weight"            # the depthwise conv: k = 1 of 9
    weight = model.named_parameters()[name]
    extra = (np.arange(24) % 3 == 0) & masks[name].any(axis=(1, 2, 3))
    free = ~masks[name][extra].reshape(-1, 9)
    taps = np.argmax(free, axis=1)
    masks[name].reshape(24, 9)[np.flatnonzero(extra), taps] = True
    weight.reshape(24, 9)[np.flatnonzero(extra), taps] = 0.7
    with pytest.warns(UserWarning, match=r"3.body.3.weight .* is padded: fan-in 1-2, "
                                         r"padded to 2 \(\+\d+\.\d% multiply-adds\)"):
        condensed = condense(model, masks=masks)
    entry = next(e for e in condensed.report if e["layer"] == name)
    assert entry["result"] == "padded" and entry["k"] == 2
    assert_close(condensed.logits(x), model.forward(x, False).astype(np.float64))


def test_a_residual_whose_body_is_only_dropout_doubles_its_input():
    rng = np.random.default_rng(15)
    model = Sequential(Linear(4, 3, rng=rng), Residual(Sequential(Dropout(0.5))))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert_close(condense(model).logits(x), model.forward(x, False).astype(np.float64))


def test_an_unknown_layer_inside_a_block_is_refused_naming_its_path():
    class Odd(Layer):
        pass

    rng = np.random.default_rng(0)
    model = Sequential(Residual(Sequential(Linear(3, 3, rng=rng), Odd())))
    with pytest.raises(TypeError, match=r"condense cannot convert layer 0.body.1: Odd"):
        condense(model)


# -- the file format ---------------------------------------------------------------------

def test_a_file_of_format_version_1_still_loads_and_predicts_as_it_did():
    model = load(os.path.join(DATA, "condensed_cnn_v1.npz"))
    with np.load(os.path.join(DATA, "condensed_cnn_v1_expected.npz")) as expected:
        np.testing.assert_array_equal(model.logits(expected["x"], input_scale="normalised"),
                                      expected["x_logits"])
        np.testing.assert_array_equal(model.logits(expected["raw"]), expected["raw_logits"])
    assert [s.kind for s in model.stages].count("scatter") == 2


def _residual_at(condensed):
    return next(i for i, s in enumerate(condensed.stages) if isinstance(s, graph.Residual))


def _arrays(path):
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _save(path, arrays, edit=None):
    if edit is not None:
        metadata = json.loads(str(arrays["metadata"]))
        edit(metadata)
        arrays["metadata"] = np.array(json.dumps(metadata))
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("stage3.body0.values"), "stage3.body0.values"),
    (lambda a: a.update({"stage3.body0.extra": np.zeros(1)}), "unexpected arrays"),
    (lambda a: a.update(format_version=np.array(1)), "format_version 2, the archive 1"),
])
def test_nested_members_are_named_and_checked(tmp_path, change, match):
    model, masks, _ = build("bottleneck", 8)
    path = tmp_path / "m.npz"
    condensed = condense(model, masks=masks)
    condensed.save(path)
    arrays = _arrays(path)
    assert _residual_at(condensed) == 3      # conv, relu, max pool, the bottleneck
    assert "stage3.shortcut0.values" in arrays and not any("downsample" in k for k in arrays)
    change(arrays)
    _save(path, arrays)
    with pytest.raises(ValueError, match=match):
        load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["stages"][3].pop("shortcut"), "must hold a list of stages 'shortcut'"),
    (lambda m: m["stages"][3].update(body="nothing"), "must hold a list of stages 'body'"),
    (lambda m: m["stages"][3]["body"][0].update(type="mystery"), "unknown type"),
])
def test_bad_pipelines_are_refused(tmp_path, edit, match):
    model, masks, _ = build("bottleneck", 9)
    path = tmp_path / "m.npz"
    condensed = condense(model, masks=masks)
    assert _residual_at(condensed) == 3
    condensed.save(path)
    arrays = _arrays(path)
    _save(path, arrays, edit)
    with pytest.raises(ValueError, match=match):
        load(path)


def test_a_version_1_file_may_not_hold_the_new_stages(tmp_path):
    path = tmp_path / "m.npz"
    arrays = _arrays(os.path.join(DATA, "condensed_cnn_v1.npz"))
    _save(path, arrays, lambda m: m["stages"][2].update(type="gelu"))
    with pytest.raises(ValueError, match="stage 2 has unknown type"):
        load(path)
    _save(path, _arrays(os.path.join(DATA, "condensed_cnn_v1.npz")),
          lambda m: m["stages"][3].update(axis=1))
    with pytest.raises(ValueError, match=r"unknown settings \['axis'\]"):
        load(path)


# -- input scales ------------------------------------------------------------------------------

@pytest.fixture
def served():
    model, masks, _ = build("bottleneck", 10)
    stats = ([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 256, (2, 3, 12, 12), dtype=np.uint8)
    return condense(model, masks=masks, input_stats=stats), model, raw, stats


def test_every_input_scale_gives_the_same_logits(served):
    condensed, model, raw, (mean, std) = served
    normalised = ((raw / 255.0 - np.reshape(mean, (1, 3, 1, 1)))
                  / np.reshape(std, (1, 3, 1, 1))).astype(np.float32)
    expected = model.forward(normalised, False).astype(np.float64)
    assert_close(condensed.logits(raw), expected)
    for x, scale in ((raw.astype(np.float32), "uint8"), (raw / np.float32(255), "unit"),
                     (normalised, "normalised")):
        assert_close(condensed.logits(x, input_scale=scale), expected)
    assert_close(condensed.logits(normalised), expected)     # negative: normalised


@pytest.mark.parametrize("make, scale, match", [
    (lambda raw: raw / 255.0, None, "pass input_scale='unit'"),
    (lambda raw: raw.astype(np.float32), None, "cannot tell apart"),
    (lambda raw: raw, "unit", "x is a uint8 array"),
    (lambda raw: raw.astype(np.float32), "unit", r"values in \[0, 1\]"),
    (lambda raw: raw / 255.0, "images", "input_scale must be one of"),
])
def test_inputs_it_cannot_tell_apart_are_refused_in_one_line(served, make, scale, match):
    condensed, _, raw, _ = served
    with pytest.raises(ValueError, match=match) as caught:
        condensed.predict(make(raw), input_scale=scale)
    assert "\n" not in str(caught.value)


def test_the_model_says_what_it_expects(served):
    condensed = served[0]
    assert "input_scale='unit'" in repr(condensed) and "uint8 images" in condensed.expects
    plain = CondensedModel(condensed.stages)
    assert "normalised floats" in repr(plain)
    with pytest.raises(ValueError, match="stores no input normalisation"):
        plain.logits(np.zeros((1, 3, 12, 12), dtype=np.float32), input_scale="unit")


def test_the_audit_of_a_condensed_file_reaches_its_nested_layers(tmp_path, capsys):
    from srigl_np import audit

    model, masks, _ = build("bottleneck", 13)
    condense(model, masks=masks).save(tmp_path / "m.npz")
    assert audit.main([str(tmp_path / "m.npz"), "--json"]) == 0
    layers = [layer["layer"] for layer in json.loads(capsys.readouterr().out)["layers"]]
    assert "stage3.shortcut.0" in layers and sum(".body." in name for name in layers) == 5
    assert len(layers) == len(masks)


def test_the_fast_gelu_is_the_exact_one_to_float32_rounding():
    import math
    import warnings

    from scipy.special import erf

    from srigl_np.inference.stages import Gelu

    x = np.random.default_rng(14).standard_normal((3, 50000)).astype(np.float32) * 4   # 3 chunks
    x[0, :6] = [0.0, -0.0, 1e-30, -40.0, 40.0, -1e30]
    wide = x.astype(np.float64)
    exact = wide * (1 + erf(wide / math.sqrt(2))) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = Gelu().forward(x)
    assert got.dtype == np.float32
    assert (np.abs(got - exact) <= 3e-7 * np.maximum(np.abs(x), 1e-30) + 1e-30).all()
    # The constants condense carries through it are float64, by scipy's erf.
    np.testing.assert_allclose(Gelu.constant(wide[0, :5]), exact[0, :5], rtol=1e-15, atol=0)
