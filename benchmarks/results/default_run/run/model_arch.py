"""Built-in architectures of advcoreset in plain PyTorch (written by advcoreset's export).

build(meta) rebuilds the model that model.json describes; load model.safetensors into it."""

from __future__ import annotations

# ---- from advcoreset.models.base ----
"""The one model interface every architecture implements.

Pixels enter in [0, 1]; normalisation happens inside ``forward`` so attacks work in pixel space
(AutoAttack's advice). Selection needs the penultimate features and the final linear layer, PAT's
self-bound LPIPS needs intermediate activations: both are exposed here.
"""


from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ImageClassifier(nn.Module):
    """``stages`` -> global pool -> flatten -> ``head`` (nn.Linear).

    Args:
        stages: modules applied in order to the normalised input; each output is one activation map
            (used by perceptual distances).
        pool: maps the last stage's output to (B, F, 1, 1) or (B, F).
        feature_dim: F, the width of the penultimate features.
        num_classes: C.
        mean, std: per-channel normalisation, length = input channels.
    """

    def __init__(self, stages: Sequence[nn.Module], pool: nn.Module, feature_dim: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) in [0, 1] -> the output of every stage, in order."""
        h = self.normalize(x)
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) in [0, 1] -> penultimate features (B, F)."""
        h = self.normalize(x)
        for stage in self.stages:
            h = stage(h)
        return torch.flatten(self.pool(h), 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.head(self.features(x))

# ---- from advcoreset.models.cnn ----
"""Small CNNs for 28x28 / 32x32 inputs on CPU: sized for any input size and channel count."""


from collections.abc import Sequence

from torch import nn



def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _cnn(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float],
         width: int, convs: int, hidden: int, fc_layers: int) -> ImageClassifier:
    if input_size < 4:
        raise ValueError(f"the small CNNs need inputs of at least 4x4 pixels, got {input_size}")
    side = input_size // 4
    stages = [_block(in_channels, width, convs), _block(width, 2 * width, convs)]
    fcs: list[nn.Module] = [nn.Flatten()]
    dim = 2 * width * side * side
    for _ in range(fc_layers):
        fcs += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
        dim = hidden
    return ImageClassifier(stages, nn.Sequential(*fcs), hidden, num_classes, mean, std)


def small_cnn(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
              std: Sequence[float], width: int = 32, hidden: int = 200) -> ImageClassifier:
    """conv(w)-pool, conv(2w)-pool, fc(hidden), linear head: the fast CPU default (~2,900 img/s
    attack passes at batch 128 on 2 cores for 28x28x1)."""
    return _cnn(in_channels, num_classes, input_size, mean, std, width, 1, hidden, 1)


def trades_cnn(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
               std: Sequence[float], width: int = 32, hidden: int = 200) -> ImageClassifier:
    """The TRADES / Madry MNIST-style net: conv(w)x2-pool, conv(2w)x2-pool, fc(hidden)x2, head."""
    return _cnn(in_channels, num_classes, input_size, mean, std, width, 2, hidden, 2)

# ---- from advcoreset.models.resnet ----
"""Residual networks for GPU runs: PreAct ResNet-18, ResNet-18/50 and WideResNet-28/34-10.

Every factory has the registry signature ``fn(in_channels, num_classes, input_size, mean, std, width=None)``
and returns an :class:`~advcoreset.models.base.ImageClassifier` whose ``stages`` are the stem followed by
the residual groups, so ``feature_maps`` gives activations at every scale (PAT's self-bound LPIPS reads
them). Inputs are pixels in [0, 1], (B, in_channels, input_size, input_size); normalisation by
``mean``/``std`` happens inside ``forward``.

``width`` means the widen factor for WideResNets (default 10) and the base width of the ResNets
(default 64: groups of 64-128-256-512 channels, times 4 for the bottleneck ResNet-50). ``None`` keeps the
published architecture.

Layouts follow the reference robust-training code:

* ``preact_resnet18``: the PreAct ResNet-18 of Wong et al. (fast_adversarial) and Rice et al.
  (robust overfitting): 3x3 stem conv without BN, pre-activation blocks, final BN+ReLU before pooling.
* ``resnet18`` / ``resnet50``: He et al. post-activation ResNets. Inputs of at most
  ``CIFAR_STEM_MAX_SIZE`` pixels get the CIFAR stem (3x3 conv, stride 1, no max-pool); larger ones
  (ImageNet subsets at 224) get the ImageNet stem (7x7 conv stride 2, 3x3 max-pool stride 2).
* ``wrn28_10`` / ``wrn34_10``: the WideResNet of the Madry / TRADES CIFAR code (pre-activation blocks,
  16-160-320-640 channels, no dropout) without TRADES' unused ``sub_block1``.
"""


from collections.abc import Callable, Sequence

from torch import Tensor, nn


CIFAR_STEM_MAX_SIZE = 64
"""Largest input side (pixels) that gets the CIFAR stem; larger inputs get the ImageNet stem."""

MIN_INPUT_SIZE = 8


def _check_args(name: str, in_channels: int, num_classes: int, input_size: int, width: int | None) -> None:
    if in_channels < 1:
        raise ValueError(f"{name} needs in_channels >= 1, got {in_channels}")
    if num_classes < 1:
        raise ValueError(f"{name} needs num_classes >= 1, got {num_classes}")
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"{name} needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels, "
                         f"got {input_size}")
    if width is not None and width < 1:
        raise ValueError(f"{name} needs width >= 1 (or None for the published default), got {width}")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _kaiming_init(module: nn.Module) -> None:
    # He et al. / Zagoruyko & Komodakis initialise convs with fan-out Kaiming normal, BN to identity.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------
# Pre-activation blocks (PreAct ResNet, WideResNet)
# ---------------------------------------------------------------------------------------------------------


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity, or a 1x1 conv of the pre-activated input when the
    shape changes (He et al. 2016, "Identity mappings"). (B, cin, H, W) -> (B, cout, H/stride, W/stride).
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _conv1x1(cin, cout, stride) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + skip


# ---------------------------------------------------------------------------------------------------------
# Post-activation blocks (ResNet-18 / ResNet-50)
# ---------------------------------------------------------------------------------------------------------


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the (projected) input, then ReLU.
    (B, cin, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, added to the (projected) input, then ReLU
    (the stride sits on the 3x3 conv, "ResNet v1.5"). (B, cin, H, W) -> (B, 4*planes, H/stride, W/stride).
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + skip)


# ---------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------


def _group(block: Callable[[int, int, int], nn.Module], cin: int, cout: int, n: int, stride: int,
           ) -> nn.Sequential:
    """n blocks; the first changes width cin -> cout and applies the stride."""
    return nn.Sequential(*[block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])


def _preact_pool(channels: int) -> nn.Sequential:
    # Pre-activation nets end on an un-normalised sum: the final BN+ReLU belongs before pooling.
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def _resnet(name: str, block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int], in_channels: int,
            num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float],
            width: int | None) -> ImageClassifier:
    _check_args(name, in_channels, num_classes, input_size, width)
    base = 64 if width is None else width
    stem: nn.Module
    if input_size <= CIFAR_STEM_MAX_SIZE:
        stem = nn.Sequential(_conv3x3(in_channels, base), nn.BatchNorm2d(base), nn.ReLU(inplace=True))
    else:
        stem = nn.Sequential(nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False),
                             nn.BatchNorm2d(base), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, stride=2, padding=1))
    stages: list[nn.Module] = [stem]
    cin = base
    for i, n in enumerate(depths):
        planes = base * 2 ** i
        blocks: list[nn.Module] = []
        for j in range(n):
            blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
            cin = planes * block.expansion
        stages.append(nn.Sequential(*blocks))
    _kaiming_init(nn.ModuleList(stages))
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return ImageClassifier(stages, pool, cin, num_classes, mean, std)


def preact_resnet18(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
                    std: Sequence[float], width: int | None = None) -> ImageClassifier:
    """PreAct ResNet-18 (Wong et al. 2020; Rice et al. 2020): 11,172,170 parameters for 3 channels and
    10 classes. Stages: stem conv3x3 (no BN), then four groups of two :class:`PreActBlock` with widths
    w, 2w, 4w, 8w (w = ``width`` or 64) and strides 1, 2, 2, 2. Features: 8w after BN+ReLU+global
    average pooling. Always the CIFAR stem (the reference net is CIFAR-only); pooling is adaptive, so
    any input side >= 8 works.
    """
    _check_args("preact_resnet18", in_channels, num_classes, input_size, width)
    base = 64 if width is None else width
    stages: list[nn.Module] = [_conv3x3(in_channels, base)]
    cin = base
    for i in range(4):
        cout = base * 2 ** i
        stages.append(_group(PreActBlock, cin, cout, 2, 1 if i == 0 else 2))
        cin = cout
    # PyTorch's default initialisation, as in the reference code.
    return ImageClassifier(stages, _preact_pool(cin), cin, num_classes, mean, std)


def resnet18(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
             std: Sequence[float], width: int | None = None) -> ImageClassifier:
    """ResNet-18 (He et al. 2016), groups of [2, 2, 2, 2] :class:`BasicBlock` with widths w..8w
    (w = ``width`` or 64). CIFAR stem for ``input_size`` <= 64 (11,173,962 parameters for 3 channels and
    10 classes), ImageNet stem above (11,689,512 for 1000 classes, as torchvision). Features: 8w.
    """
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), in_channels, num_classes, input_size, mean, std,
                   width)


def resnet50(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
             std: Sequence[float], width: int | None = None) -> ImageClassifier:
    """ResNet-50 (He et al. 2016), groups of [3, 4, 6, 3] :class:`Bottleneck` blocks with inner widths
    w..8w (w = ``width`` or 64). CIFAR stem for ``input_size`` <= 64 (23,520,842 parameters for 3 channels
    and 10 classes), ImageNet stem above (25,557,032 for 1000 classes, as torchvision). Features: 32w.
    """
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), in_channels, num_classes, input_size, mean, std,
                   width)


def _wide_resnet(name: str, depth: int, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], width: int | None) -> ImageClassifier:
    _check_args(name, in_channels, num_classes, input_size, width)
    if (depth - 4) % 6 != 0:
        raise ValueError(f"{name}: WideResNet depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    k = 10 if width is None else width
    widths = (16 * k, 32 * k, 64 * k)
    stages: list[nn.Module] = [_conv3x3(in_channels, 16)]
    cin = 16
    for i, cout in enumerate(widths):
        stages.append(_group(PreActBlock, cin, cout, n, 1 if i == 0 else 2))
        cin = cout
    _kaiming_init(nn.ModuleList(stages))
    return ImageClassifier(stages, _preact_pool(cin), cin, num_classes, mean, std)


def wrn28_10(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
             std: Sequence[float], width: int | None = None) -> ImageClassifier:
    """WideResNet-28-10 (Zagoruyko & Komodakis 2016): stem conv3x3 to 16 channels, then three groups of
    4 :class:`PreActBlock` with 16k, 32k, 64k channels (k = ``width`` or 10) and strides 1, 2, 2;
    36,479,194 parameters for 3 channels and 10 classes. Features: 64k.
    """
    return _wide_resnet("wrn28_10", 28, in_channels, num_classes, input_size, mean, std, width)


def wrn34_10(in_channels: int, num_classes: int, input_size: int, mean: Sequence[float],
             std: Sequence[float], width: int | None = None) -> ImageClassifier:
    """WideResNet-34-10, the TRADES / Madry CIFAR model: as :func:`wrn28_10` with 5 blocks per group;
    46,160,474 parameters for 3 channels and 10 classes. Features: 64k.
    """
    return _wide_resnet("wrn34_10", 34, in_channels, num_classes, input_size, mean, std, width)


ARCHITECTURES: dict[str, Callable[..., ImageClassifier]] = {
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "wrn28_10": wrn28_10,
    "wrn34_10": wrn34_10,
}
"""Name -> factory; ``advcoreset.models`` registers every entry."""

__all__ = ["ARCHITECTURES", "BasicBlock", "Bottleneck", "PreActBlock", "preact_resnet18", "resnet18",
           "resnet50", "wrn28_10", "wrn34_10"]

BUILDERS = {
    'preact_resnet18': preact_resnet18,
    'resnet18': resnet18,
    'resnet50': resnet50,
    'small_cnn': small_cnn,
    'trades_cnn': trades_cnn,
    'wrn28_10': wrn28_10,
    'wrn34_10': wrn34_10,
}


def build(meta: dict) -> nn.Module:
    """An untrained model from parsed model.json (its ``architecture`` and ``arguments``)."""
    return BUILDERS[meta["architecture"]](**meta["arguments"])
