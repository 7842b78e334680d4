"""The one model interface every architecture implements.

Pixels enter in [0, 1]; normalisation happens inside ``forward`` so attacks work in pixel space
(AutoAttack's advice). Selection needs the penultimate features and the final linear layer, PAT's
self-bound LPIPS needs intermediate activations: both are exposed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable


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

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

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


class _Pool2x2ChannelsLast(torch.autograd.Function):
    """2x2 max pooling of a contiguous (B, C, H, W) CPU tensor through the channels_last kernel: the same
    values, the same argmax (first maximum in row-major window order) and so the same gradient as the
    contiguous kernel, bit for bit, faster (benchmarks/README.md, "Precision and speed")."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        out, idx = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, return_indices=True)
        ctx.save_for_backward(x, idx)
        return out.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        x, idx = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, [2, 2], [2, 2], [0, 0],
                                                               [1, 1], False, idx.contiguous())


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose CPU forward on contiguous multi-channel maps runs the channels_last kernel
    (faster than the contiguous one: ``benchmarks/eval_speed.py``); results and gradients are identical. Other inputs
    (CUDA, channels_last, one channel) take the ordinary path."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        fast = x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous()
        if not fast:
            return F.max_pool2d(x, 2)
        if torch.is_grad_enabled() and x.requires_grad:
            return _Pool2x2ChannelsLast.apply(x)
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2).contiguous()
