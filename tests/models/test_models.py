"""Model registry and architectures: shapes, the ImageClassifier contract, parameter counts, normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advcoreset.models import ImageClassifier, available_models, create_model
from advcoreset.models.resnet import BasicBlock, Bottleneck, PreActBlock

ARCHS = ["preact_resnet18", "resnet18", "resnet50", "wrn28_10", "wrn34_10"]
ALL = ["small_cnn", "trades_cnn", *ARCHS]

# Narrow versions keep the contract tests fast; full sizes are built only where the size is the point.
SMALL_WIDTH = {"small_cnn": 4, "trades_cnn": 4, "preact_resnet18": 4, "resnet18": 4, "resnet50": 2,
               "wrn28_10": 1, "wrn34_10": 1}
STAGES = {"small_cnn": 2, "trades_cnn": 2, "preact_resnet18": 5, "resnet18": 5, "resnet50": 5,
          "wrn28_10": 4, "wrn34_10": 4}


def small(name: str, in_channels: int = 3, input_size: int = 32, num_classes: int = 10,
          **kw: object) -> ImageClassifier:
    torch.manual_seed(0)
    return create_model(name, in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                        width=SMALL_WIDTH[name], **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_every_architecture() -> None:
    assert set(ALL) <= set(available_models())
    for name in ALL:
        assert isinstance(small(name), ImageClassifier)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError) as err:
        create_model("resnet1000", in_channels=3, num_classes=10, input_size=32)
    msg = str(err.value)
    assert "resnet1000" in msg
    for name in ALL:
        assert name in msg


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_channels,input_size", [(1, 28), (3, 32), (3, 28), (1, 32)])
def test_contract(name: str, in_channels: int, input_size: int) -> None:
    model = small(name, in_channels=in_channels, input_size=input_size, num_classes=7).eval()
    x = torch.rand(2, in_channels, input_size, input_size)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        maps = model.feature_maps(x)
        pooled = torch.flatten(model.pool(maps[-1]), 1)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, model.feature_dim)
    assert model.head.in_features == model.feature_dim
    torch.testing.assert_close(model.head(feats), logits)
    assert len(maps) == len(model.stages) == STAGES[name]
    assert all(m.shape[0] == 2 and m.dim() == 4 for m in maps)
    torch.testing.assert_close(pooled, feats)
    # No stage may overwrite its input in place: each stored map must still be the previous one's image.
    with torch.no_grad():
        for i in range(1, len(maps)):
            torch.testing.assert_close(model.stages[i](maps[i - 1].clone()), maps[i])


@pytest.mark.parametrize("name,input_size,sides,channels", [
    ("preact_resnet18", 32, [32, 32, 16, 8, 4], [4, 4, 8, 16, 32]),
    ("resnet18", 32, [32, 32, 16, 8, 4], [4, 4, 8, 16, 32]),
    ("resnet18", 64, [64, 64, 32, 16, 8], [4, 4, 8, 16, 32]),  # largest input with the CIFAR stem
    ("resnet18", 96, [24, 24, 12, 6, 3], [4, 4, 8, 16, 32]),  # ImageNet stem: /2 conv, /2 max-pool
    ("resnet50", 28, [28, 28, 14, 7, 4], [2, 8, 16, 32, 64]),
    ("wrn28_10", 32, [32, 32, 16, 8], [16, 16, 32, 64]),
    ("wrn34_10", 8, [8, 8, 4, 2], [16, 16, 32, 64]),
])
def test_multiscale_feature_maps(name: str, input_size: int, sides: list[int], channels: list[int]) -> None:
    model = small(name, input_size=input_size).eval()
    with torch.no_grad():
        maps = model.feature_maps(torch.rand(1, 3, input_size, input_size))
    assert [m.shape[-1] for m in maps] == sides
    assert [m.shape[-2] for m in maps] == sides
    assert [m.shape[1] for m in maps] == channels
    assert model.feature_dim == channels[-1]


def test_stem_follows_input_size() -> None:
    def first_conv(model: ImageClassifier) -> nn.Conv2d:
        return next(m for m in model.modules() if isinstance(m, nn.Conv2d))

    for name in ("resnet18", "resnet50"):
        assert first_conv(small(name, input_size=64)).kernel_size == (3, 3)
        assert first_conv(small(name, input_size=65)).kernel_size == (7, 7)
        assert first_conv(small(name, input_size=65)).stride == (2, 2)


# Known totals: the reference CIFAR code (fast_adversarial / robust_overfitting PreActResNet18 with its
# final BN; kuangliu ResNet18/50; TRADES WideResNet without the unused sub_block1) and torchvision's
# ImageNet ResNets. The published rounded figures are checked to 1% as well.
@pytest.mark.parametrize("name,in_channels,input_size,num_classes,exact,published", [
    ("preact_resnet18", 3, 32, 10, 11_172_170, 11.2e6),
    ("resnet18", 3, 32, 10, 11_173_962, 11.2e6),
    ("resnet18", 3, 224, 1000, 11_689_512, 11.69e6),
    ("resnet50", 3, 32, 10, 23_520_842, 23.5e6),
    ("resnet50", 3, 224, 1000, 25_557_032, 25.56e6),
    ("wrn28_10", 3, 32, 10, 36_479_194, 36.5e6),
    ("wrn34_10", 3, 32, 10, 46_160_474, 46.2e6),
])
def test_parameter_counts(name: str, in_channels: int, input_size: int, num_classes: int, exact: int,
                          published: float) -> None:
    model = create_model(name, in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    count = n_params(model)
    assert count == exact
    assert abs(count - published) / published < 0.01


def test_width_means_widen_factor_and_base_width() -> None:
    # WRN: every conv but the 16-channel stem scales with k, so k=1 is far smaller and the head is 64 wide.
    wrn = create_model("wrn34_10", in_channels=3, num_classes=10, input_size=32, width=1)
    assert wrn.feature_dim == 64
    # ResNet-18 with base width 32: groups of 32-64-128-256 channels.
    r = create_model("resnet18", in_channels=3, num_classes=10, input_size=32, width=32)
    assert r.feature_dim == 256
    assert r.stages[1][0].conv1.weight.shape == (32, 32, 3, 3)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet18", in_channels=3, num_classes=10, input_size=32, width=0)


def test_too_small_input_rejected() -> None:
    for name in ARCHS:
        with pytest.raises(ValueError, match="at least 8x8"):
            create_model(name, in_channels=3, num_classes=10, input_size=4, width=1)


@pytest.mark.parametrize("name,input_size", [("wrn34_10", 16), ("wrn28_10", 16), ("resnet50", 32),
                                             ("preact_resnet18", 32), ("resnet18", 32)])
def test_full_size_forward(name: str, input_size: int) -> None:
    model = create_model(name, in_channels=3, num_classes=10, input_size=input_size).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, input_size, input_size))
    assert out.shape == (1, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_normalisation_inside_forward(name: str) -> None:
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    model = small(name, mean=mean, std=std).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        maps = model.feature_maps(x)
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        model.mean.zero_()
        model.std.fill_(1.0)
        ref = model((x - m) / s)
        ref_maps = model.feature_maps((x - m) / s)
    torch.testing.assert_close(out, ref)
    for a, b in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(out, model(x).detach())  # the statistics do change the output


@pytest.mark.parametrize("name", ARCHS)
def test_train_mode_input_gradient(name: str) -> None:
    # Attacks differentiate the loss w.r.t. pixels through BatchNorm in either mode.
    model = small(name, input_size=16).train()
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_residual_blocks_known_answers() -> None:
    # With the residual branch silenced, a block reduces to its shortcut: this pins the wiring.
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        same = PreActBlock(8, 8, 1).eval()
        same.conv2.weight.zero_()
        torch.testing.assert_close(same(x), x)
        # Shape-changing pre-act blocks project the *pre-activated* input (fast_adversarial / TRADES).
        down = PreActBlock(8, 16, 2).eval()
        down.bn1.running_mean.normal_()
        down.conv2.weight.zero_()
        assert down.shortcut is not None
        torch.testing.assert_close(down(x), down.shortcut(torch.relu(down.bn1(x))))
        assert down(x).shape == (2, 16, 3, 3)
        # Post-activation blocks: ReLU(shortcut(x)) once the last BN of the branch is zero.
        basic = BasicBlock(8, 8, 1).eval()
        basic.bn2.weight.zero_()
        torch.testing.assert_close(basic(x), torch.relu(x))
        bottle = Bottleneck(8, 4, 2).eval()
        bottle.bn3.weight.zero_()
        assert bottle.shortcut is not None
        torch.testing.assert_close(bottle(x), torch.relu(bottle.shortcut(x)))
        assert bottle(x).shape == (2, 16, 3, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 16, 28, 28), (3, 5, 7, 9), (2, 1, 6, 6)])
def test_fast_pool_equals_max_pool_bit_for_bit(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Values, gradients (the argmax among ties) and the no-grad path equal nn.MaxPool2d(2)'s exactly."""
    from advcoreset.models.base import MaxPool2x2

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 2).round().relu().to(dtype)  # many ties, zeros among them
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref, fast = nn.MaxPool2d(2)(a), MaxPool2x2()(b)
    assert torch.equal(ref, fast) and fast.is_contiguous()
    w = torch.randn(ref.shape, generator=g).to(dtype)
    (ref * w).sum().backward()
    (fast * w).sum().backward()
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), ref.detach())


@pytest.mark.parametrize("name", ["small_cnn", "trades_cnn"])
def test_small_cnns_equal_conv_relu_pool_bit_for_bit(name: str) -> None:
    """The CNNs pool before their last ReLU and through MaxPool2x2; the textbook conv-ReLU-MaxPool2d network
    with the same parameters gives the same logits and input gradients exactly."""
    model = create_model(name, 1, 10, 28, [0.5], [0.25]).eval()
    ref = create_model(name, 1, 10, 28, [0.5], [0.25]).eval()
    stages = []
    for stage in ref.stages:
        layers: list[nn.Module] = []
        for conv in (m for m in stage if isinstance(m, nn.Conv2d)):
            layers += [conv, nn.ReLU()]
        stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
    ref.stages = nn.ModuleList(stages)
    ref.load_state_dict(model.state_dict())  # the same parameter names
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = model(a), ref(b)
    assert torch.equal(out_a, out_b)
    (ga,) = torch.autograd.grad(out_a.logsumexp(1).sum(), a)
    (gb,) = torch.autograd.grad(out_b.logsumexp(1).sum(), b)
    assert torch.equal(ga, gb)
