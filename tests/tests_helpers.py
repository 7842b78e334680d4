"""An outside model for ``advcoreset eval --model tests_helpers:factory`` (not built by advcoreset)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DigitsMLP(nn.Module):
    """(B, 1, 8, 8) pixels in [0, 1] -> (B, num_classes) logits; normalises inside forward."""

    def __init__(self, num_classes: int = 10, in_pixels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_pixels, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - 0.3) / 0.3)


def factory() -> nn.Module:
    return DigitsMLP()


def five_classes() -> nn.Module:
    """Takes digits images but returns 5 logits: a class-count mismatch with digits' 10 classes."""
    return DigitsMLP(num_classes=5)


def cifar_sized() -> nn.Module:
    """Expects 3x32x32 images: an input-shape mismatch with digits' 1x8x8."""
    return DigitsMLP(in_pixels=3 * 32 * 32)


def trained_digits_mlp(steps: int = 150) -> nn.Module:
    """``factory()`` fitted for a few full-batch Adam steps on the digits training split (seeded)."""
    from advcoreset.data import load_dataset

    torch.manual_seed(0)
    train = load_dataset("digits", None, train=True)
    x, y = train.images.float() / 255, train.labels
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()
