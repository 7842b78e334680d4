"""Device-resident batching with batched augmentation and per-example weights.

The whole dataset lives on the device as uint8 (Fashion-MNIST: 47 MB; CIFAR-10: 150 MB) and mini-batches
are gathered by index, so a weighted coreset is just an (indices, weights) pair: no copying, no Python
per-sample work, no DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) in 0..255 -> float32 in [0, 1]; float input is returned as float32."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Batched augmentation: zero-pad by ``padding``, crop back at a random offset per image, and
    (if ``flip``) mirror each image horizontally with probability 1/2.

    x: (B, C, H, W) float -> (B, C, H, W). Randomness comes from ``generator`` (on the CPU, so runs
    are reproducible across devices); one gather does the whole batch.
    """
    b, _, h, w = x.shape
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
        rows = (torch.arange(h, device=x.device).unsqueeze(0) + off[0].unsqueeze(1))  # (B, H)
        cols = (torch.arange(w, device=x.device).unsqueeze(0) + off[1].unsqueeze(1))  # (B, W)
        bi = torch.arange(b, device=x.device).view(b, 1, 1)
        x = xp.permute(0, 2, 3, 1)[bi, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device).view(b, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    return x.contiguous()


@dataclass
class Batch:
    x: Tensor
    """(B, C, H, W) float in [0, 1], augmented."""
    y: Tensor
    """(B,) int64 labels."""
    w: Tensor
    """(B,) float32 per-example weights (1 for full data)."""
    idx: Tensor
    """(B,) int64 positions in the training array."""

    def __iter__(self) -> Iterator[Tensor]:
        """``x, y, w = batch``: the three a training step needs (``batch.idx`` stays available)."""
        return iter((self.x, self.y, self.w))


def iterate_batches(images: Tensor, labels: Tensor, indices: Tensor, weights: Tensor, batch_size: int,
                    generator: torch.Generator, *, shuffle: bool = True, padding: int = 0, flip: bool = False,
                    memory_format: torch.memory_format = torch.contiguous_format) -> Iterator[Batch]:
    """Yield mini-batches over ``indices`` (a coreset or all positions) in a seeded random order.

    Args:
        images: (N, C, H, W) uint8 on the training device; labels: (N,) int64 on the same device.
        indices: (k,) int64 positions to train on; weights: (k,) their weights.
        generator: CPU generator for the order and the augmentation (its state is checkpointed).
    """
    k = indices.numel()
    order = torch.randperm(k, generator=generator) if shuffle else torch.arange(k)
    order = order.to(indices.device)
    for start in range(0, k, batch_size):
        sel = order[start:start + batch_size]
        idx = indices[sel]
        dev_idx = idx.to(images.device)
        x = to_float(images[dev_idx])
        if padding or flip:
            x = random_crop_flip(x, padding, flip, generator)
        yield Batch(x.contiguous(memory_format=memory_format), labels[dev_idx], weights[sel].to(images.device),
                    idx)
