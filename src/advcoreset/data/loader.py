"""Device-resident batching with batched augmentation and per-example weights, for one process or many.

The whole dataset lives on the device as uint8 (Fashion-MNIST: 47 MB; CIFAR-10: 150 MB) and mini-batches
are gathered by index, so a weighted coreset is just an (indices, weights) pair: no copying, no Python
per-sample work, no DataLoader workers.

Several processes (``rank`` of ``world``) share every global batch: each draws what one process draws for the
whole global batch (its order, its augmentation) and keeps its contiguous slice of it (``Part``), so N ranks
together take exactly the steps one process takes. A world of one is the single-process batching itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from advcoreset.world import shard_range


def to_float(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) in 0..255 -> float32 in [0, 1]; float input is returned as float32."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


@dataclass(frozen=True)
class Part:
    """One rank's part of a global batch of ``size`` examples: rows [start, stop) of it."""

    start: int
    stop: int
    size: int
    """Examples in the global batch (what one process would see)."""
    weight: Tensor
    """Scalar: the global batch's weight sum, summed in the order one process sums it."""
    world: int
    """Ranks sharing the batch."""
    padded: bool = False
    """The global batch had fewer examples than ranks and this rank none: its first example stands in with
    weight 0, so every rank still runs the step's collectives and adds nothing to the update (nor to the
    epoch's statistics)."""

    @property
    def rows(self) -> slice:
        """This rank's rows of the global batch (the stand-in's: the first)."""
        return slice(0, 1) if self.padded else slice(self.start, self.stop)


def rank_part(indices: Tensor, weights: Tensor, rank: int, world: int) -> tuple[Tensor, Tensor, Part | None]:
    """This rank's (indices (b,), weights (b,)) of a global batch's (indices (B,), weights (B,)), and its ``Part``:
    the contiguous ``shard_range`` slice, or a weight-0 stand-in when the slice is empty. A world of one keeps the
    whole batch (Part None)."""
    if world == 1:
        return indices, weights, None
    lo, hi = shard_range(indices.numel(), rank, world)
    part = Part(lo, hi, indices.numel(), weights.sum(), world, hi == lo)
    return indices[part.rows], torch.zeros_like(weights[:1]) if part.padded else weights[lo:hi], part


@dataclass(frozen=True)
class Augmentation:
    """What ``random_crop_flip`` did to each image of a batch, so that a tensor in the augmented frame (an
    adversarial perturbation) can be carried back to the image's own frame (``undo``)."""

    padding: int
    offsets: Tensor | None
    """(2, B) int64 crop offsets in [0, 2 padding] (rows, columns) of the zero-padded image; None: no crop."""
    flips: Tensor | None
    """(B,) bool: the image was mirrored horizontally (after the crop); None: no flip."""

    def undo(self, t: Tensor) -> Tensor:
        """(B, C, H, W) in the augmented frame -> the images' own frame: the flip undone, then the crop (pixels
        the crop cut off come back as 0, pixels from the padding are dropped). Exact where the crop kept the
        pixel: ``undo(random_crop_flip(x))`` equals ``x`` there."""
        if self.flips is not None:
            t = torch.where(self.flips.to(t.device).view(-1, 1, 1, 1), t.flip(3), t)
        if self.offsets is not None:
            # aug(r, c) = x(r + o - p): x(R, C) = aug(R - o + p) = pad_p(aug)(R + (2p - o))
            t = _crop(t, self.padding, 2 * self.padding - self.offsets.to(t.device))
        return t.contiguous()


def _crop(x: Tensor, padding: int, off: Tensor) -> Tensor:
    """(B, C, H, W) zero-padded by ``padding`` and cropped back at offsets ``off`` (2, B): one gather."""
    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (torch.arange(h, device=x.device).unsqueeze(0) + off[0].unsqueeze(1))  # (B, H)
    cols = (torch.arange(w, device=x.device).unsqueeze(0) + off[1].unsqueeze(1))  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return xp.permute(0, 2, 3, 1)[bi, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator,
                     part: Part | None = None) -> Tensor:
    """Batched augmentation: zero-pad by ``padding``, crop back at a random offset per image, and
    (if ``flip``) mirror each image horizontally with probability 1/2.

    x: (B, C, H, W) float -> (B, C, H, W). Randomness comes from ``generator`` (on the CPU, so runs
    are reproducible across devices); one gather does the whole batch. ``part``: ``x`` is this rank's part
    of a global batch; the draws are made for the whole global batch (crop offsets (2, size), then flip coins
    (size,)) and sliced, so every rank advances the generator alike and gives each image the augmentation one
    process gives it. ``augment_batch`` also returns what was drawn.
    """
    return augment_batch(x, padding, flip, generator, part)[0]


def augment_batch(x: Tensor, padding: int, flip: bool, generator: torch.Generator,
                  part: Part | None = None) -> tuple[Tensor, Augmentation]:
    """``random_crop_flip`` of ``x`` (B, C, H, W) and the ``Augmentation`` it drew (to undo it)."""
    b = x.shape[0]
    n = b if part is None else part.size
    off = mask = None
    if padding > 0:
        off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
        off = (off if part is None else off[:, part.rows]).to(x.device)
        x = _crop(x, padding, off)
    if flip:
        coins = torch.rand(n, generator=generator) < 0.5
        mask = (coins if part is None else coins[part.rows]).to(x.device)
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
    return x.contiguous(), Augmentation(padding, off, mask)


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
    part: Part | None = None
    """This rank's part of a global batch (None: the whole batch, one process)."""
    aug: Augmentation | None = None
    """The built-in augmentation drawn for ``x`` (None: none), which ``Augmentation.undo`` reverses."""
    strong: Tensor | None = None
    """(B,) bool on the host: the example is a coreset member, to train at the objective's attack, the others at
    a cheaper one (``selection.rest``); None: every example takes the objective's attack."""

    @property
    def norm(self) -> Tensor | None:
        """The weighted mean's normaliser (``Objective.loss_at``'s ``norm``): None for a whole batch (its own
        weight sum); for a rank's part, the global batch's weight sum over the world, so that DDP's average of
        the ranks' gradients is the gradient of one process's weighted mean over the global batch."""
        return None if self.part is None else self.part.weight / self.part.world

    @property
    def counted(self) -> bool:
        """False for a rank's weight-0 stand-in, which the epoch's statistics leave out."""
        return self.part is None or not self.part.padded

    def __iter__(self) -> Iterator[Tensor]:
        """``x, y, w = batch``: the three a training step needs (``batch.idx`` stays available)."""
        return iter((self.x, self.y, self.w))


def iterate_batches(images: Tensor, labels: Tensor, indices: Tensor, weights: Tensor, batch_size: int,
                    generator: torch.Generator, *, shuffle: bool = True, padding: int = 0, flip: bool = False,
                    memory_format: torch.memory_format = torch.contiguous_format, rank: int = 0,
                    world: int = 1) -> Iterator[Batch]:
    """Yield mini-batches over ``indices`` (a coreset or all positions) in a seeded random order.

    Args:
        images: (N, C, H, W) uint8 on the training device; labels: (N,) int64 on the same device.
        indices: (k,) int64 positions to train on; weights: (k,) their weights.
        batch_size: the global batch (shared by the ranks).
        generator: CPU generator for the order and the augmentation (its state is checkpointed); every rank
            holds it in the same state and draws from it what one process draws.
        rank, world: this rank's contiguous slice of every global batch (``rank_part``), augmented as one
            process augments it; ``Batch.part`` says which.
    """
    k = indices.numel()
    order = torch.randperm(k, generator=generator) if shuffle else torch.arange(k)
    order = order.to(indices.device)
    for start in range(0, k, batch_size):
        sel = order[start:start + batch_size]
        idx, w, part = rank_part(indices[sel], weights[sel], rank, world)
        dev_idx = idx.to(images.device)
        x, aug = to_float(images[dev_idx]), None
        if padding or flip:
            x, aug = augment_batch(x, padding, flip, generator, part)
        yield Batch(x.contiguous(memory_format=memory_format), labels[dev_idx], w.to(images.device), idx, part,
                    aug)
