"""LPIPS distances for perceptual adversarial training (Laidlaw, Singla, Feizi, ICLR 2021).

Definition used everywhere in this package (the PAT paper's, section 3):

    d(x1, x2) = || phi(x1) - phi(x2) ||_2,
    phi(x)    = concat_l [ g_l(x) / (||g_l(x)||_channels + 1e-10) / sqrt(H_l * W_l) ],

where g_l(x) is the l-th activation map (B, C_l, H_l, W_l) of a feature network, normalised to unit
length along channels at every pixel, then divided by sqrt(H_l W_l) so each layer contributes the
spatial *mean* of its squared per-pixel differences. Equivalently

    d(x1, x2)^2 = sum_l mean_{h,w} || g^_l(x1)[:, h, w] - g^_l(x2)[:, h, w] ||^2,

i.e. d is the square root of Zhang et al.'s LPIPS with uniform (all-ones) linear weights: no learned
LPIPS calibration weights are available offline, and PAT's own code also uses uniform weights. Each
layer contributes at most 4 to d^2 (unit vectors are at most 2 apart), so d <= 2 sqrt(L).

Two feature networks:

- ``SelfLPIPS(model)``: the stage outputs ``model.feature_maps(x)`` of the classifier being trained
  (PAT's "self-bound"), computed with the model in eval mode (BatchNorm frozen) and its mode restored.
  The model is borrowed, not owned: its parameters do not appear in this module's parameters.
- ``alexnet_lpips(path)``: AlexNet's five conv+ReLU outputs (relu1..relu5, as in LPIPS), weights read
  from a local file in torchvision's key layout (``features.0.weight``, ...). Nothing is downloaded.

Scale: self-bound distances depend on the network (number of stages, width, training), so a bound that
suits AlexNet on CIFAR-10 (the paper's 0.5) does not transfer; see ``advcoreset.attacks.perceptual``
for the defaults chosen for Fashion-MNIST.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FeatureFn = Callable[[Tensor], list[Tensor]]
"""x (B, C, H, W) in [0, 1] -> list of activation maps (B, C_l, H_l, W_l)."""

_NORM_EPS = 1e-10  # LPIPS' channel-normalisation constant


def normalize_maps(maps: list[Tensor]) -> list[Tensor]:
    """Unit-normalise each map along channels and scale it by 1 / sqrt(H_l W_l).

    maps: list of (B, C_l, H_l, W_l) -> list of the same shapes (the pieces of phi(x))."""
    out = []
    for g in maps:
        if g.dim() != 4:
            raise ValueError(f"LPIPS needs 4-d activation maps (B, C, H, W), got shape {tuple(g.shape)}")
        norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
        out.append(g / (norm + _NORM_EPS) / (g.shape[2] * g.shape[3]) ** 0.5)
    return out


def _safe_sqrt(s: Tensor) -> Tensor:
    """sqrt with gradient 0 (not inf/NaN) at s == 0, so d(x, x) = 0 exactly and stays differentiable."""
    pos = s > 0
    return torch.where(pos, torch.where(pos, s, torch.ones_like(s)).sqrt(), torch.zeros_like(s))


class LPIPS(nn.Module):
    """d(x1, x2) = ||phi(x1) - phi(x2)||_2 (see the module docstring) for a given feature network.

    Args:
        features: maps x (B, C, H, W) in [0, 1] to a list of activation maps. An ``nn.Module`` is
            registered as a submodule (moves with ``.to``); a plain callable is only referenced.
    """

    def __init__(self, features: nn.Module | FeatureFn) -> None:
        super().__init__()
        self.features = features

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) in [0, 1] -> raw activation maps of the feature network."""
        maps = self.features(x)
        if not isinstance(maps, (list, tuple)) or not maps:
            raise TypeError("the LPIPS feature network must return a non-empty list of activation maps")
        return list(maps)

    def embed(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) in [0, 1] -> phi(x) as a list of normalised maps (B, C_l, H_l, W_l)."""
        return normalize_maps(self.feature_maps(x))

    @staticmethod
    def distance(e1: list[Tensor], e2: list[Tensor]) -> Tensor:
        """Distance between two embeddings from ``embed`` (same batch size) -> (B,)."""
        if len(e1) != len(e2):
            raise ValueError(f"embeddings have {len(e1)} and {len(e2)} layers")
        sq = sum((a - b).pow(2).flatten(1).sum(1) for a, b in zip(e1, e2, strict=True))
        return _safe_sqrt(cast(Tensor, sq))

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """x1, x2: (B, C, H, W) in [0, 1] -> (B,) LPIPS distances."""
        if x1.shape != x2.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x1.shape)} and "
                             f"{tuple(x2.shape)}")
        # Two passes of batch B (not one of 2B): the attacks measure distances the same way, so their
        # feasibility checks and this function agree to the last bit on deterministic backends.
        return self.distance(self.embed(x1), self.embed(x2))


class SelfLPIPS(LPIPS):
    """PAT's self-bound LPIPS: the activation maps ``model.feature_maps(x)`` of the classifier itself.

    Args:
        model: an ``ImageClassifier`` (anything with ``feature_maps``). Borrowed: it is not registered
            as a submodule, so an objective holding this distance does not own the model's parameters.
        eval_mode: compute features with the model in eval mode (BatchNorm frozen, running statistics
            untouched) and restore its mode afterwards. PAT uses the model in eval mode.
    """

    def __init__(self, model: nn.Module, eval_mode: bool = True) -> None:
        if not callable(getattr(model, "feature_maps", None)):
            raise TypeError(f"SelfLPIPS needs a model with a feature_maps(x) method (an ImageClassifier); "
                            f"got {type(model).__name__}")
        super().__init__(cast(FeatureFn, model.feature_maps))  # checked callable above
        self._model_ref = (model,)  # a tuple keeps nn.Module from registering the borrowed model
        self.use_eval_mode = eval_mode

    @property
    def model(self) -> nn.Module:
        return self._model_ref[0]

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        model = self.model
        if not self.use_eval_mode or not model.training:
            return super().feature_maps(x)
        model.eval()
        try:
            return super().feature_maps(x)
        finally:
            model.train(True)


# ----------------------------------------------------------------------------------------- AlexNet

_ALEXNET_CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1),
                  8: (384, 256, 3, 1, 1), 10: (256, 256, 3, 1, 1)}
"""index in ``features`` -> (in, out, kernel, stride, padding): torchvision's AlexNet layout."""
_ALEXNET_TAPS = (1, 4, 7, 9, 11)  # relu1..relu5, the layers LPIPS reads
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional trunk returning relu1..relu5 (LPIPS' layers), defined here (no torchvision).

    Input: x (B, 1 or 3, H, W) in [0, 1]. Grey images are repeated to 3 channels; images smaller than
    ``min_size`` on a side are bilinearly resized up to it (AlexNet's strides need >= 32 pixels for
    relu5 to have any spatial extent; CIFAR-sized inputs pass unchanged, as in the paper); then the
    ImageNet normalisation AlexNet was trained with is applied (equal to LPIPS' own scaling layer).
    Output: five maps (B, 64|192|384|256|256, H_l, W_l).
    """

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, min_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(12):
            if i in _ALEXNET_CONVS:
                cin, cout, k, s, p = _ALEXNET_CONVS[i]
                layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            elif i in (2, 5):
                layers.append(nn.MaxPool2d(3, stride=2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.min_size = min_size
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"AlexNet LPIPS needs (B, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[2:]
        if min(h, w) < self.min_size:
            scale = self.min_size / min(h, w)
            size = (max(self.min_size, round(h * scale)), max(self.min_size, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        act = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            act = layer(act)
            if i in _ALEXNET_TAPS:
                out.append(act)
        return out


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    from advcoreset.safeload import load_weights_only  # issue 11: errors name the file

    state = load_weights_only(path, "AlexNet LPIPS weights file")
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"AlexNet weights file {path} must hold a mapping of parameter names to tensors")
    return dict(state)


def alexnet_lpips(weights_path: str | Path, min_size: int = 32) -> LPIPS:
    """LPIPS over a frozen AlexNet whose weights are read from a local file.

    Args:
        weights_path: ``.safetensors`` file, or a ``torch.save`` file of a state dict (read with
            ``weights_only=True``). Keys in torchvision's AlexNet layout: ``features.{0,3,6,8,10}.weight``
            and ``.bias`` (a ``module.`` prefix is stripped; ``classifier.*`` keys are ignored).
        min_size: see ``AlexNetFeatures``.

    Returns:
        An ``LPIPS`` in eval mode with parameters frozen (``requires_grad=False``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: keys are missing / unexpected or shapes do not match AlexNet's.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"AlexNet LPIPS weights file {path} does not exist; give the path of a local "
                                f"torchvision-layout AlexNet state dict (.safetensors or .pt)")
    state = {k.removeprefix("module."): v for k, v in _read_state_dict(path).items()}
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    net = AlexNetFeatures(min_size=min_size)
    expected = {k: v.shape for k, v in net.state_dict().items() if k.startswith("features.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"AlexNet weights file {path} does not match AlexNet's layout: missing keys "
                         f"{missing}, unexpected keys {unexpected} (expected torchvision names such as "
                         f"'features.0.weight')")
    bad = [f"{k}: file {tuple(state[k].shape)} vs AlexNet {tuple(s)}" for k, s in expected.items()
           if state[k].shape != s]
    if bad:
        raise ValueError(f"AlexNet weights file {path} has wrong shapes: {'; '.join(bad)}")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    net.requires_grad_(False)
    return LPIPS(net).eval()
