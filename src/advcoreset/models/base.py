"""The one model interface every architecture implements.

Pixels enter in [0, 1]; normalisation happens inside ``forward`` so attacks work in pixel space
(AutoAttack's advice). Selection needs the penultimate features and the final linear layer, PAT's
self-bound LPIPS needs intermediate activations: both are exposed here.
"""

from __future__ import annotations

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
