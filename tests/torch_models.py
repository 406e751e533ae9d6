"""PyTorch reference modules of the paper's architectures, for tests and benchmarks.

Importing this module needs torch (use ``pytest.importorskip("torch")`` first). API:

    BUILDERS                       {name: builder} for the names of
                                   srigl_np.nn.architectures.ARCHITECTURES
    cifar_resnet18(width=64, blocks=(2, 2, 2, 2), num_classes=10)
    wide_resnet22(depth=22, widen_factor=2, num_classes=10, drop_rate=0.3)
    resnet50(width=64, layers=(3, 4, 6, 3), num_classes=1000)
    mobilenet_v3_large(width_mult=1.0, num_classes=1000, dropout=0.2, blocks=None)
    mobilenet_v3_small(width_mult=1.0, num_classes=1000, dropout=0.2, blocks=None)
    vit_b_16(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
             mlp_dim=3072, num_classes=1000, dropout=0.0)
        -> a float32 torch.nn.Module in training mode whose state_dict keys equal
           the srigl_np model's parameter and buffer names (plus BatchNorm's
           num_batches_tracked); takes the same size arguments as the srigl_np builder.
    load_ours_into_torch(model, module)   copy a srigl_np model's arrays into the module
    load_torch_into_ours(module, model)   the reverse
    torch_state(module)                   {key: float numpy array}, num_batches_tracked left out

Where ``torchvision.models`` imports (beside the CPU-only torch it needs the stand-in
of ``_import_torchvision_models``) and the sizes are ones torchvision can express
(ResNet-50 at width 64 with any blocks per stage, MobileNet-V3 with every block, ViT
at any size), the builders return torchvision's own module; otherwise a torch.nn
rewrite of the same graph, written from the model's description (kuangliu's and the
SRigL authors' CIFAR models are not in torchvision at all).
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

def _import_torchvision_models():
    """torchvision.models, or None. torchvision 0.28.0 from PyPI is built for the CUDA
    torch: beside the CPU build, its import stops in ``torchvision._meta_registrations``
    ("operator torchvision::nms does not exist"), which registers fake kernels for the
    detection operators. The model definitions need none of them, so an empty module
    stands in for that one file."""
    import sys
    import types

    name = "torchvision._meta_registrations"
    if "torchvision" not in sys.modules:
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        import torchvision.models as models
    except Exception:   # ImportError, or a torchvision that fails elsewhere
        return None
    return models


tv_models = _import_torchvision_models()


def torch_state(module):
    """{state_dict key: numpy array} without BatchNorm's num_batches_tracked."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _check_keys(ours, theirs):
    if set(ours) != set(theirs):
        raise KeyError(f"keys differ: only ours {sorted(set(ours) - set(theirs))}, "
                       f"only torch's {sorted(set(theirs) - set(ours))}")


def load_ours_into_torch(model, module):
    """Copy every parameter and buffer of the srigl_np ``model`` into the torch ``module``
    (cast to the module's dtype); the key sets must be equal. Returns ``module``."""
    ours = {**model.named_parameters(), **model.named_buffers()}
    targets = {k: v for k, v in module.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    _check_keys(ours, targets)
    with torch.no_grad():
        for key, target in targets.items():
            if tuple(target.shape) != ours[key].shape:
                raise ValueError(f"{key}: torch shape {tuple(target.shape)}, ours "
                                 f"{ours[key].shape}")
            target.copy_(torch.as_tensor(ours[key]))
    return module


def load_torch_into_ours(module, model):
    """Copy the torch ``module``'s state into the srigl_np ``model`` (cast to its dtypes)."""
    state = torch_state(module)
    ours = {**model.named_parameters(), **model.named_buffers()}
    _check_keys(ours, state)
    model.load_state_dict({k: state[k].astype(ours[k].dtype) for k in ours})
    return model


# -- CIFAR ResNet-18 (kuangliu's, as the SRigL authors use it) -------------------------

class BasicBlock(nn.Module):
    def __init__(self, c_in, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, width, blocks, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c_in = width
        for stage, count in enumerate(blocks):
            planes = width * 2 ** stage
            stage_blocks = []
            for i in range(count):
                stage_blocks.append(BasicBlock(c_in, planes, 2 if stage and not i else 1))
                c_in = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


def cifar_resnet18(width=64, blocks=(2, 2, 2, 2), num_classes=10):
    return CifarResNet(width, blocks, num_classes)


# -- WRN (the SRigL authors' pre-activation WideResNet) --------------------------------

class WideBasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, drop_rate):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal = c_in == c_out
        if not self.equal:
            self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(a)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equal else self.convShortcut(a)) + out


class WideGroup(nn.Module):
    def __init__(self, count, c_in, c_out, stride, drop_rate):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(c_out if i else c_in, c_out, 1 if i else stride, drop_rate)
            for i in range(count)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes, drop_rate):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = WideGroup(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = WideGroup(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = WideGroup(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        self.channels = channels[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return F.log_softmax(self.fc(out.view(-1, self.channels)), dim=1)


def wide_resnet22(depth=22, widen_factor=2, num_classes=10, drop_rate=0.3):
    return WideResNet(depth, widen_factor, num_classes, drop_rate)


# -- ResNet-50 (torchvision's) ---------------------------------------------------------

class Bottleneck(nn.Module):
    def __init__(self, c_in, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, 4 * planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, width, layers, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = width
        for stage, count in enumerate(layers):
            planes = width * 2 ** stage
            stage_blocks = []
            for i in range(count):
                stage_blocks.append(Bottleneck(c_in, planes, 2 if stage and not i else 1))
                c_in = 4 * planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def resnet50(width=64, layers=(3, 4, 6, 3), num_classes=1000):
    if tv_models is not None and width == 64:
        return tv_models.resnet.ResNet(tv_models.resnet.Bottleneck, list(layers),
                                       num_classes=num_classes)
    return ResNet(width, layers, num_classes)


# -- MobileNet-V3 (torchvision's) -----------------------------------------------------

def _conv_norm_act(c_in, c_out, kernel, stride=1, groups=1, activation=None):
    """torchvision's Conv2dNormActivation: children "0" conv, "1" BN, "2" activation."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                        bias=False), nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        # torchvision's Hardsigmoid, written out: torch's own hardsigmoid backward
        # multiplies by a float32 1/6 even in float64 (relative error 3e-8).
        scale = F.relu6(self.fc2(F.relu(self.fc1(scale))) + 3) / 6
        return x * scale


def _divisible(value, divisor=8):
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    def __init__(self, c_in, kernel, expanded, c_out, use_se, activation, stride):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = []
        if expanded != c_in:
            layers.append(_conv_norm_act(c_in, expanded, 1, activation=act))
        layers.append(_conv_norm_act(expanded, expanded, kernel, stride, expanded, act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4)))
        layers.append(_conv_norm_act(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetV3(nn.Module):
    def __init__(self, table, last_channel, width_mult, num_classes, dropout):
        super().__init__()

        def scaled(c):
            return _divisible(c * width_mult)

        layers = [_conv_norm_act(3, scaled(table[0][0]), 3, 2, activation=nn.Hardswish)]
        for c_in, kernel, expanded, c_out, use_se, activation, stride in table:
            layers.append(InvertedResidual(scaled(c_in), kernel, scaled(expanded),
                                           scaled(c_out), use_se, activation, stride))
        last_in = scaled(table[-1][3])
        layers.append(_conv_norm_act(last_in, 6 * last_in, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, scaled(last_channel)), nn.Hardswish(), nn.Dropout(dropout),
            nn.Linear(scaled(last_channel), num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _mobilenet(variant, width_mult, num_classes, dropout, blocks):
    from srigl_np.nn import mobilenet as ours   # the configuration tables only
    table = ours.LARGE if variant == "large" else ours.SMALL
    if tv_models is not None and blocks is None:
        build = getattr(tv_models, f"mobilenet_v3_{variant}")
        return build(width_mult=width_mult, num_classes=num_classes, dropout=dropout)
    return MobileNetV3(table[:blocks], ours.LAST_CHANNEL[variant], width_mult, num_classes,
                       dropout)


def mobilenet_v3_large(width_mult=1.0, num_classes=1000, dropout=0.2, blocks=None):
    return _mobilenet("large", width_mult, num_classes, dropout, blocks)


def mobilenet_v3_small(width_mult=1.0, num_classes=1000, dropout=0.2, blocks=None):
    return _mobilenet("small", width_mult, num_classes, dropout, blocks)


# -- ViT (torchvision's VisionTransformer) ---------------------------------------------

class EncoderBlock(nn.Module):
    def __init__(self, num_heads, hidden_dim, mlp_dim, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, hidden_dim), nn.Dropout(dropout))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, length, num_layers, num_heads, hidden_dim, mlp_dim, dropout):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout))
            for i in range(num_layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                 num_classes, dropout):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        length = 1 + (image_size // patch_size) ** 2
        self.encoder = Encoder(length, num_layers, num_heads, hidden_dim, mlp_dim, dropout)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, x):
        x = self.conv_proj(x)
        x = x.reshape(x.shape[0], self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
             mlp_dim=3072, num_classes=1000, dropout=0.0):
    args = (image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim)
    if tv_models is not None:
        return tv_models.VisionTransformer(*args, num_classes=num_classes, dropout=dropout)
    return VisionTransformer(*args, num_classes, dropout)


BUILDERS = {"cifar_resnet18": cifar_resnet18, "wide_resnet22": wide_resnet22,
            "resnet50": resnet50, "mobilenet_v3_large": mobilenet_v3_large,
            "mobilenet_v3_small": mobilenet_v3_small, "vit_b_16": vit_b_16}
