"""The coreset as a ``torch.utils.data.Sampler``: which dataset indices an epoch visits, in which order, on
which rank, and with which weights.

    sampler = CoresetSampler(indices, weights, seed=0, rank=rank, world=world)
    loader = DataLoader(train_set, sampler=sampler, batch_size=64)   # plain torch: this rank's share
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                                       # as on a DistributedSampler
        ...

``CoresetLoader`` holds one (``loader.sampler``), re-points it at every new coreset and reads it through a
``DataLoader`` whose batches (``CoresetBatches``) carry the weights. Selection itself (warm start, rounds, the
selector) is the loader's; the sampler only orders the current coreset.

Two ways to share an epoch among ranks (``CoresetBatches``' ``split``): ``stride``, ``DistributedSampler``'s (each
rank its own indices, its own batches of ``batch_size``); and ``global_batch``, the trainer's (every global batch
of ``batch_size`` drawn as one process draws it, each rank its contiguous slice; ``data.loader.rank_part``), which
makes N ranks take exactly one process's steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from advcoreset.data.loader import Part, rank_part

WEIGHT_RULES = ("batch", "epoch", "resample")
SPLITS = ("stride", "global_batch")


class CoresetSampler(Sampler[int]):
    """One epoch of the current coreset as dataset indices: shuffled, drawn anew under the ``resample`` rule,
    and split over ``world`` ranks as ``DistributedSampler`` splits.

    Args:
        indices: (k,) int64 dataset positions of the coreset, or an int n for all of ``range(n)``.
        weights: (k,) float weights aligned with ``indices`` (default: ones).
        weight_rule: ``resample`` draws k indices per epoch with replacement, in proportion to the weights,
            and gives them unit weights (uniform weights: the coreset as it is); ``batch`` and ``epoch`` keep
            the weights (they differ in the loss normaliser only, see ``coreset.loader``).
        shuffle: a random order per epoch (False: the coreset's order).
        seed: without ``generator``, epoch e draws from a generator seeded ``seed + e``, as
            ``DistributedSampler``: the same order on every rank, a new one per ``set_epoch``.
        generator: draw from this CPU generator instead (one stream across epochs: every rank must hold it
            in the same state; its state is part of ``state_dict``).
        rank, world: this rank's share: positions ``rank, rank + world, ...`` of the epoch's order, padded
            by repeating its start to a multiple of ``world`` (or cut to one with ``drop_last``), so every
            rank gets ``len(self)`` indices and the ranks together cover the coreset.
    """

    def __init__(self, indices: Tensor | int, weights: Tensor | None = None, *, weight_rule: str = "batch",
                 shuffle: bool = True, seed: int = 0, generator: torch.Generator | None = None, rank: int = 0,
                 world: int = 1, drop_last: bool = False) -> None:
        if weight_rule not in WEIGHT_RULES:
            raise ValueError(f"weight_rule must be one of {WEIGHT_RULES}, got {weight_rule!r}")
        if isinstance(world, bool) or not isinstance(world, int) or world < 1 or not isinstance(rank, int) \
                or not 0 <= rank < world:
            raise ValueError(f"need world >= 1 and 0 <= rank < world, got rank={rank!r}, world={world!r}")
        self.weight_rule, self.shuffle, self.seed, self.generator = weight_rule, shuffle, seed, generator
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch = 0
        idx = torch.arange(indices) if isinstance(indices, int) else indices
        self.set_coreset(idx, torch.ones(idx.numel()) if weights is None else weights)

    # ------------------------------------------------------------------ coreset
    def set_coreset(self, indices: Tensor, weights: Tensor) -> None:
        """Order ``indices`` (k,) int64 with ``weights`` (k,) from the next epoch on."""
        if not (isinstance(indices, Tensor) and isinstance(weights, Tensor)) or indices.dim() != 1 \
                or indices.shape != weights.shape or indices.is_floating_point():
            raise ValueError("a coreset is (k,) integer indices and (k,) weights, got "
                             f"{getattr(indices, 'shape', indices)!r} and {getattr(weights, 'shape', weights)!r}")
        self.indices, self.weights = indices, weights

    def weights_of(self, idx: Tensor) -> Tensor:
        """The weights of dataset indices ``idx`` (any shape) in the current coreset, for a ``DataLoader`` of
        one's own whose items carry their index; a ValueError names an index that is not in it."""
        held, order = torch.sort(self.indices)
        q = idx.to(held.device).contiguous()
        if not q.numel():
            return self.weights.new_empty(q.shape)
        at = torch.searchsorted(held, q).clamp_max(max(held.numel() - 1, 0))
        if not held.numel() or not bool((held[at] == q).all()):
            raise ValueError("an index asked for is not in the current coreset (a batch of another epoch?)")
        return self.weights[order[at].to(self.weights.device)]

    # -------------------------------------------------------------------- epoch
    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the one the next iteration draws (with ``seed``: its order is a function of it)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def _gen(self) -> torch.Generator:
        return self.generator if self.generator is not None else torch.Generator().manual_seed(self.seed + self.epoch)

    def drawn(self, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The epoch's (indices (k,), weights (k,)) before ordering: under ``resample`` with unequal weights, k
        draws with replacement in proportion to the weights, with unit weights; else the coreset itself."""
        g = gen if gen is not None else self._gen()
        idx, w = self.indices, self.weights
        if self.weight_rule == "resample" and idx.numel() and not bool((w == w[0]).all()):
            # as many draws as the coreset holds: the epoch's expected loss is the weighted one and no step is
            # dominated by a few heavy points
            draw = torch.multinomial(w.float().cpu(), idx.numel(), replacement=True, generator=g).to(idx.device)
            idx, w = idx[draw], torch.ones_like(w)
        return idx, w

    def epoch_order(self) -> tuple[Tensor, Tensor]:
        """The whole epoch's (indices (k,), weights (k,)) in order, every rank's, the same on every rank. Draws
        from the generator (the resampled draw, then the permutation), as the loader's batches always have."""
        g = self._gen()
        idx, w = self.drawn(g)
        k = idx.numel()
        order = (torch.randperm(k, generator=g) if self.shuffle else torch.arange(k)).to(idx.device)
        return idx[order], w[order]

    def epoch_plan(self) -> tuple[Tensor, Tensor]:
        """This rank's (indices (m,), weights (m,)) of the epoch, in order, m = ``len(self)`` (``epoch_order``
        split as ``DistributedSampler`` splits)."""
        idx, w = self.epoch_order()
        return self._share(idx), self._share(w)

    def _share(self, t: Tensor) -> Tensor:
        """This rank's entries of the epoch's order ``t`` (k,), as ``DistributedSampler`` splits indices."""
        if self.world == 1:
            return t
        k = t.numel()
        total = self.count(k) * self.world
        if total > k:
            t = torch.cat([t, t.repeat(-(-(total - k) // k))[:total - k]])
        return t[self.rank:total:self.world]

    def count(self, k: int | None = None) -> int:
        """Indices this rank gets of an epoch over ``k`` (default: the current coreset's size)."""
        k = self.indices.numel() if k is None else k
        if self.drop_last or k == 0:
            return k // self.world
        return -(-k // self.world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_plan()[0].tolist())

    def __len__(self) -> int:
        return self.count()

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The epoch, the coreset and the generator's state (None without one): ``load_state_dict`` continues
        with the very orders an uninterrupted run draws."""
        return {"epoch": self.epoch, "indices": self.indices.cpu(), "weights": self.weights.cpu(),
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` (the coreset moves to the device the current one is on)."""
        dev = self.indices.device
        self.set_coreset(state["indices"].to(dev), state["weights"].to(self.weights.device))
        self.set_epoch(int(state["epoch"]))
        if state.get("generator") is not None:
            if self.generator is None:
                raise ValueError("the state holds a generator's state but this sampler draws from its seed")
            self.generator.set_state(state["generator"])


class CoresetBatches(Sampler[list[int]]):
    """A ``DataLoader``'s ``batch_sampler`` over a ``CoresetSampler``'s epoch: index lists of ``batch_size``
    (the last one shorter, or dropped with ``drop_last``). Each batch's (indices (b,), weights (b,), part) wait in
    ``pending``, oldest first, until the reader takes them with the batch the DataLoader fetched for them
    (batches come back in order, with or without workers).

    ``split``: how the sampler's ``rank`` of ``world`` shares the epoch: ``stride``, as ``DistributedSampler``
    (``CoresetSampler.epoch_plan``; part None); ``global_batch``, every global batch of ``batch_size`` cut into
    contiguous per-rank slices (``data.loader.rank_part``; a world of one: the whole batch, part None)."""

    def __init__(self, sampler: CoresetSampler, batch_size: int, drop_last: bool = False,
                 split: str = "stride") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.sampler, self.batch_size, self.drop_last, self.split = sampler, batch_size, drop_last, split
        self.pending: deque[tuple[Tensor, Tensor, Part | None]] = deque()

    def count(self, k: int) -> int:
        """Batches this rank gets of an epoch over ``k`` indices (all ranks' together)."""
        m = self.sampler.count(k) if self.split == "stride" else k
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __len__(self) -> int:
        return self.count(self.sampler.indices.numel())

    def __iter__(self) -> Iterator[list[int]]:
        self.pending.clear()
        stride = self.split == "stride"
        idx, w = self.sampler.epoch_plan() if stride else self.sampler.epoch_order()
        host = idx.cpu()  # one copy per epoch: index lists for the fetch, no device sync per batch
        m, b = idx.numel(), self.batch_size
        for start in range(0, (m // b if self.drop_last else -(-m // b)) * b, b):
            stop = start + b
            if stride:
                self.pending.append((idx[start:stop], w[start:stop], None))
                yield host[start:stop].tolist()
                continue
            mine, weights, part = rank_part(idx[start:stop], w[start:stop], self.sampler.rank, self.sampler.world)
            self.pending.append((mine, weights, part))
            yield host[start:stop][part.rows if part is not None else slice(None)].tolist()
