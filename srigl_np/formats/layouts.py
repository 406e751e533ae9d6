"""The paper's architectures as PyTorch writes their state_dicts: every key and its shape.

    LAYOUTS[name](**sizes) -> {key: shape}

One function per architecture, keyed by the names ``nn.architectures`` builds
(``ARCHITECTURE_NAMES``), and the authors' narrowed ResNet-18 (``EXTRA_NAMES``). Each gives the keys ``module.state_dict()`` holds for the
authors' or torchvision's module at those sizes, in its order, without BatchNorm's
``num_batches_tracked`` (a counter, not a weight; our models have none). A state_dict
is that architecture exactly when its keys and shapes equal these (``recognition``);
our architectures' ``named_parameters()`` and ``named_buffers()`` carry the same keys.

    cifar_resnet18      kuangliu's CIFAR ResNet-18 (the authors' ``models/resnet.py``):
                        3x3 stem, no max-pool, BasicBlocks with a ``shortcut``
                        Sequential (1x1 conv + BN) where the stride or width changes,
                        ``linear`` classifier. sizes: width (the stem's; the stages have
                        1, 2, 4, 8 times it), blocks (per stage), num_classes
    wide_resnet22       the authors' pre-activation WRN (``models/wide_resnet.py``):
                        ``blockN.layer.i`` with bn1, conv1, bn2, conv2 and a 1x1
                        ``convShortcut`` where the width changes. sizes: depth (6n + 4),
                        widen_factor (stage widths 16k, 32k, 64k after a 16-channel stem),
                        num_classes
    resnet50            torchvision's ResNet-50: 7x7 stem, Bottleneck blocks (1x1, 3x3,
                        1x1 to 4x the width) with a ``downsample`` (1x1 conv + BN).
                        sizes: width (the stem's, and the first stage's bottleneck; the
                        stages have 1, 2, 4, 8 times it), layers (blocks per stage),
                        num_classes
    mobilenet_v3_large  torchvision's MobileNet-V3 (inverted residuals with depthwise
    mobilenet_v3_small  convolutions, squeeze-excitation ``fc1``/``fc2`` 1x1 convs),
                        channels from the published table times width_mult, rounded by
                        ``make_divisible``. sizes: width_mult, num_classes, and blocks
                        (only the first ``blocks`` inverted residuals; a test's small
                        version) where fewer than the table's
    skinny_resnet18     cifar_resnet18's graph at any stem and stage widths: the authors'
                        SkinnyResNet18 whose diet leaves each stage one width (its
                        fixture in tests/data/authors/). sizes: stem, widths, blocks,
                        num_classes. Not one of the paper's six: ``model_map`` builds it
    vit_b_16            torchvision's VisionTransformer: ``conv_proj`` patch embedding,
                        ``class_token``, ``encoder.pos_embedding``, encoder layers with a
                        stacked ``in_proj_weight`` (3 * hidden, hidden) and ``mlp.0`` /
                        ``mlp.3``, ``heads.head``. sizes: image_size, patch_size,
                        num_layers, num_heads, hidden_dim, mlp_dim, num_classes
                        (num_heads leaves no trace in the shapes)
"""

ARCHITECTURE_NAMES = ("cifar_resnet18", "wide_resnet22", "resnet50", "mobilenet_v3_large",
                      "mobilenet_v3_small", "vit_b_16")
# Layouts recognised after the paper's six: the authors' SkinnyResNet18.
EXTRA_NAMES = ("skinny_resnet18",)

# torchvision's MobileNet-V3 tables (the paper's "MobileNetLarge/Small"), one row per
# inverted residual block: input, kernel, expanded and output channels, squeeze-excite.
# Activation and stride leave no trace in a state_dict; the builders hold them.
MOBILENET_BLOCKS = {
    "mobilenet_v3_large": (
        (16, 3, 16, 16, False), (16, 3, 64, 24, False), (24, 3, 72, 24, False),
        (24, 5, 72, 40, True), (40, 5, 120, 40, True), (40, 5, 120, 40, True),
        (40, 3, 240, 80, False), (80, 3, 200, 80, False), (80, 3, 184, 80, False),
        (80, 3, 184, 80, False), (80, 3, 480, 112, True), (112, 3, 672, 112, True),
        (112, 5, 672, 160, True), (160, 5, 960, 160, True), (160, 5, 960, 160, True)),
    "mobilenet_v3_small": (
        (16, 3, 16, 16, True), (16, 3, 72, 24, False), (24, 3, 88, 24, False),
        (24, 5, 96, 40, True), (40, 5, 240, 40, True), (40, 5, 240, 40, True),
        (40, 5, 120, 48, True), (48, 5, 144, 48, True), (48, 5, 288, 96, True),
        (96, 5, 576, 96, True), (96, 5, 576, 96, True)),
}
# The classifier's hidden width before width_mult ("last_channel").
MOBILENET_LAST_CHANNEL = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}


def make_divisible(value, divisor=8):
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``),
    one ``divisor`` more when rounding lost over 10%: MobileNet's channel rule."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _batch_norm(prefix, channels):
    return {f"{prefix}.{name}": (channels,)
            for name in ("weight", "bias", "running_mean", "running_var")}


def _linear(prefix, n_out, n_in):
    return {f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)}


def _stage_widths(width):
    return tuple(width * 2 ** stage for stage in range(4))


def cifar_resnet18(*, width, blocks, num_classes):
    """kuangliu's CIFAR ResNet (BasicBlock); stage strides 1, 2, 2, 2."""
    return skinny_resnet18(stem=width, widths=_stage_widths(width), blocks=blocks,
                           num_classes=num_classes)


def skinny_resnet18(*, stem, widths, blocks, num_classes):
    """The same graph with any stem and stage widths: the authors' SkinnyResNet18 where
    its diet leaves every block of a stage one width (their ``models/resnet.py``)."""
    keys = {"conv1.weight": (stem, 3, 3, 3), **_batch_norm("bn1", stem)}
    n_in = stem
    for stage, (planes, count) in enumerate(zip(widths, blocks)):
        for block in range(count):
            stride = 2 if stage and not block else 1
            prefix = f"layer{stage + 1}.{block}"
            keys |= {f"{prefix}.conv1.weight": (planes, n_in, 3, 3),
                     **_batch_norm(f"{prefix}.bn1", planes),
                     f"{prefix}.conv2.weight": (planes, planes, 3, 3),
                     **_batch_norm(f"{prefix}.bn2", planes)}
            if stride != 1 or n_in != planes:
                keys |= {f"{prefix}.shortcut.0.weight": (planes, n_in, 1, 1),
                         **_batch_norm(f"{prefix}.shortcut.1", planes)}
            n_in = planes
    return keys | _linear("linear", num_classes, n_in)


def wide_resnet22(*, depth, widen_factor, num_classes):
    """The authors' WRN-depth-widen_factor: (depth - 4) / 6 blocks in each of 3 stages."""
    per_stage = (depth - 4) // 6
    channels = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    keys = {"conv1.weight": (16, 3, 3, 3)}
    for stage in range(1, 4):
        for block in range(per_stage):
            n_in, n_out = channels[stage - 1] if block == 0 else channels[stage], channels[stage]
            prefix = f"block{stage}.layer.{block}"
            keys |= {**_batch_norm(f"{prefix}.bn1", n_in),
                     f"{prefix}.conv1.weight": (n_out, n_in, 3, 3),
                     **_batch_norm(f"{prefix}.bn2", n_out),
                     f"{prefix}.conv2.weight": (n_out, n_out, 3, 3)}
            if n_in != n_out:
                keys[f"{prefix}.convShortcut.weight"] = (n_out, n_in, 1, 1)
    return keys | _batch_norm("bn1", channels[3]) | _linear("fc", num_classes, channels[3])


def resnet50(*, width, layers, num_classes):
    """torchvision's Bottleneck ResNet (expansion 4); stage strides 1, 2, 2, 2."""
    keys = {"conv1.weight": (width, 3, 7, 7), **_batch_norm("bn1", width)}
    n_in = width
    for stage, (planes, count) in enumerate(zip(_stage_widths(width), layers)):
        for block in range(count):
            stride = 2 if stage and not block else 1
            prefix, n_out = f"layer{stage + 1}.{block}", 4 * planes
            keys |= {f"{prefix}.conv1.weight": (planes, n_in, 1, 1),
                     **_batch_norm(f"{prefix}.bn1", planes),
                     f"{prefix}.conv2.weight": (planes, planes, 3, 3),
                     **_batch_norm(f"{prefix}.bn2", planes),
                     f"{prefix}.conv3.weight": (n_out, planes, 1, 1),
                     **_batch_norm(f"{prefix}.bn3", n_out)}
            if stride != 1 or n_in != n_out:
                keys |= {f"{prefix}.downsample.0.weight": (n_out, n_in, 1, 1),
                         **_batch_norm(f"{prefix}.downsample.1", n_out)}
            n_in = n_out
    return keys | _linear("fc", num_classes, n_in)


def _mobilenet(name, *, width_mult, num_classes, blocks=None):
    """torchvision's MobileNet-V3 ``name`` at ``width_mult`` (its first ``blocks``
    inverted residuals)."""
    def adjust(channels):
        return make_divisible(channels * width_mult)

    table = MOBILENET_BLOCKS[name][:blocks]
    stem = adjust(table[0][0])
    keys = {"features.0.0.weight": (stem, 3, 3, 3), **_batch_norm("features.0.1", stem)}
    for index, (n_in, kernel, expanded, n_out, squeeze) in enumerate(table, start=1):
        n_in, expanded, n_out = adjust(n_in), adjust(expanded), adjust(n_out)
        prefix, part = f"features.{index}.block", 0
        if expanded != n_in:
            keys |= {f"{prefix}.0.0.weight": (expanded, n_in, 1, 1),
                     **_batch_norm(f"{prefix}.0.1", expanded)}
            part = 1
        keys |= {f"{prefix}.{part}.0.weight": (expanded, 1, kernel, kernel),
                 **_batch_norm(f"{prefix}.{part}.1", expanded)}
        part += 1
        if squeeze:
            squeezed = make_divisible(expanded // 4)
            keys |= {f"{prefix}.{part}.fc1.weight": (squeezed, expanded, 1, 1),
                     f"{prefix}.{part}.fc1.bias": (squeezed,),
                     f"{prefix}.{part}.fc2.weight": (expanded, squeezed, 1, 1),
                     f"{prefix}.{part}.fc2.bias": (expanded,)}
            part += 1
        keys |= {f"{prefix}.{part}.0.weight": (n_out, expanded, 1, 1),
                 **_batch_norm(f"{prefix}.{part}.1", n_out)}
    last_in = adjust(table[-1][3])
    last_out, hidden = 6 * last_in, adjust(MOBILENET_LAST_CHANNEL[name])
    head = f"features.{len(table) + 1}"
    keys |= {f"{head}.0.weight": (last_out, last_in, 1, 1), **_batch_norm(f"{head}.1", last_out)}
    return keys | _linear("classifier.0", hidden, last_out) | _linear(
        "classifier.3", num_classes, hidden)


def mobilenet_v3_large(*, width_mult, num_classes, blocks=None):
    return _mobilenet("mobilenet_v3_large", width_mult=width_mult, num_classes=num_classes,
                      blocks=blocks)


def mobilenet_v3_small(*, width_mult, num_classes, blocks=None):
    return _mobilenet("mobilenet_v3_small", width_mult=width_mult, num_classes=num_classes,
                      blocks=blocks)


def vit_b_16(*, image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
             num_classes):
    """torchvision's VisionTransformer (ViT-B/16 at 224, 16, 12, 12, 768, 3072, 1000)."""
    del num_heads   # the stacked projections have the same shapes for any head count
    tokens = (image_size // patch_size) ** 2 + 1
    keys = {"class_token": (1, 1, hidden_dim),
            "conv_proj.weight": (hidden_dim, 3, patch_size, patch_size),
            "conv_proj.bias": (hidden_dim,),
            "encoder.pos_embedding": (1, tokens, hidden_dim)}
    for layer in range(num_layers):
        prefix = f"encoder.layers.encoder_layer_{layer}"
        attention = f"{prefix}.self_attention"
        keys |= {f"{prefix}.ln_1.weight": (hidden_dim,), f"{prefix}.ln_1.bias": (hidden_dim,),
                 f"{attention}.in_proj_weight": (3 * hidden_dim, hidden_dim),
                 f"{attention}.in_proj_bias": (3 * hidden_dim,),
                 **_linear(f"{attention}.out_proj", hidden_dim, hidden_dim),
                 f"{prefix}.ln_2.weight": (hidden_dim,), f"{prefix}.ln_2.bias": (hidden_dim,),
                 **_linear(f"{prefix}.mlp.0", mlp_dim, hidden_dim),
                 **_linear(f"{prefix}.mlp.3", hidden_dim, mlp_dim)}
    return keys | {"encoder.ln.weight": (hidden_dim,), "encoder.ln.bias": (hidden_dim,),
                   **_linear("heads.head", num_classes, hidden_dim)}


LAYOUTS = {"cifar_resnet18": cifar_resnet18, "wide_resnet22": wide_resnet22,
           "resnet50": resnet50, "mobilenet_v3_large": mobilenet_v3_large,
           "mobilenet_v3_small": mobilenet_v3_small, "vit_b_16": vit_b_16,
           "skinny_resnet18": skinny_resnet18}
