"""The trainer's multi-process parts (a world > 1 under torchrun): a coreset loader whose ranks each take a
slice of every global batch and select from their own shard, and evaluation split over the ranks.

A world of one never builds these: the single-process trainer runs exactly as without torchrun.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config, SelectionConfig
from advcoreset.coreset import CoresetLoader
from advcoreset.coreset.select import effective_size
from advcoreset.data import ImageArrays
from advcoreset.data.loader import Batch
from advcoreset.data.sources import TensorSource
from advcoreset.objectives import Objective
from advcoreset.objectives.base import eval_mode
from advcoreset.precision import Precision
from advcoreset.progress import reporter_or_silent
from advcoreset.selection.distributed import select_sharded, shard_grads
from advcoreset.training.distributed import (
    DistEnv,
    DistributedError,
    RankBatch,
    iterate_rank_batches,
    loss_norm,
    reduce_accuracies,
    shard_range,
    sum_counts,
)
from advcoreset.training.evaluate import HeldOut, evaluate_model


class ShardedCoresetLoader(CoresetLoader):
    """``CoresetLoader`` for one rank of a DDP job over a ``TensorSource``.

    Every rank draws the same global order (and CRAIG's resampled draw) from the shared generator and
    yields its slice of each global batch of ``batch_size`` (``iterate_rank_batches``); ``loss_norm`` then
    makes DDP's gradient average equal one process's update on the whole global batch. Selection attacks
    and differentiates this rank's ``shard_range`` of the training set and combines the shards in
    ``selection.distributed`` mode (``select_sharded``)."""

    def __init__(self, env: DistEnv, selection: SelectionConfig, seed: int, dataset: Any, model: nn.Module,
                 objective: Objective, *, amp: Precision | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, model, objective, seed=seed, **kwargs)
        if not isinstance(self.source, TensorSource):
            raise DistributedError("training under torchrun needs the built-in in-memory datasets (a "
                                   "TensorSource); a Dataset read through a DataLoader runs in one process only")
        if self.pool is not None:
            raise DistributedError("selection.pool is not supported under torchrun yet: run it in one process, or "
                                   "set selection.pool to null")
        self.env, self.sel_cfg, self.seed, self.amp = env, selection, seed, amp
        self._rank_batch: RankBatch | None = None

    def start_epoch(self) -> dict[str, Any] | None:
        """Sharded selection when the schedule says so; the same coreset lands on every rank. Once per epoch
        (``CoresetLoader.start_epoch``)."""
        if self._started == self.epoch:
            return None
        self._started = self.epoch
        if not self.selects_at():
            return None
        src = self.source
        assert isinstance(src, TensorSource)
        t0 = time.perf_counter()
        shard, times = None, {"attack": 0.0, "gradient": 0.0}
        report = reporter_or_silent(self.progress)  # rank 0's share is shown (other ranks' reporters are silent)
        if self.selector.needs_grads:
            lo, hi = shard_range(int(src.labels.numel()), self.env.rank, self.env.world_size)
            with eval_mode(self.model), report("selection: attack pass + last-layer gradients (this rank's shard)",
                                               hi - lo) as task:
                shard, times = shard_grads(self.model, self.objective, src.images, src.labels, self.env.rank,
                                           self.env.world_size, self.batch_size, self.grad_features,
                                           self.amp.autocast if self.amp else None, task)
        t1 = time.perf_counter()
        # Owners' solvers draw from a seed of (run seed, epoch), never from the run generator, which must
        # stay in step on every rank.
        with report(f"selection: {self.selector.name} solver ({self.sel_cfg.distributed}, this rank's classes)",
                    None) as task:
            r = select_sharded(self.sel_cfg.distributed, self.sel_cfg, self.seed, shard, src.labels, self.generator,
                               self.seed * 1000 + self.epoch, second_round=self.sel_cfg.partition_rounds == 2,
                               progress=task, round_index=self.round_index())
        t2 = time.perf_counter()
        sel, labels = r.selection, src.labels
        k = self.num_classes if self.num_classes is not None else int(labels.max()) + 1
        self.selection = type(sel)(sel.indices.to(labels.device), sel.weights.to(labels.device), sel.stats)
        self.stats = {
            "epoch": self.epoch + 1, "method": self.selector.name, "coreset_size": int(sel.indices.numel()),
            "train_size": int(labels.numel()), "weight_sum": float(sel.weights.sum()),
            "effective_size": effective_size(sel.weights),
            "class_histogram": torch.bincount(labels[self.selection.indices], minlength=k).tolist(),
            "world_size": self.env.world_size, **r.record(),
            # the single-process keys: attack + gradient pass, then everything after it
            "time_selection_attack": t1 - t0, "time_selection_solver": t2 - t1,
            "time_selection_split": {**times, **r.times}, "solver_stats": sel.stats,
        }
        return self.stats

    def _iterate(self) -> Iterator[Batch]:
        """This rank's slice of every global batch (the same resampled draw and global order on every rank)."""
        src = self.source
        assert isinstance(src, TensorSource)
        indices, weights = self.sampler.drawn()
        for b, rb in iterate_rank_batches(src.images, src.labels, indices, weights, self.batch_size, self.generator,
                                          self.env, padding=src.padding, flip=src.flip,
                                          memory_format=src.memory_format):
            self._rank_batch = rb
            yield b

    def loss_norm(self, batch: Batch) -> Tensor | float:
        """This rank's normaliser of the batch just yielded (global weight / world)."""
        rb = self._rank_batch
        assert rb is not None, "loss_norm is asked for after a batch was yielded"
        return loss_norm(rb, self.env.world_size, None if self._wbar is None else rb.global_size * self._wbar)

    def counted(self, batch: Batch) -> bool:
        """False for a weight-0 stand-in (a global batch smaller than the world): not in the epoch's stats."""
        return self._rank_batch is None or not self._rank_batch.padded


def _rank_rows(n: int, first: int, env: DistEnv) -> Tensor:
    """This rank's rows of an evaluation set of ``n``: its share of the first ``first`` rows (the
    AutoAttack subset), then its share of the rest, so the ranks together cover both exactly once."""
    a0, a1 = shard_range(first, env.rank, env.world_size)
    b0, b1 = shard_range(n - first, env.rank, env.world_size)
    return torch.cat([torch.arange(a0, a1), torch.arange(first + b0, first + b1)])


def evaluate_sharded(model: nn.Module, objective: Objective, cfg: Config, test: tuple[Tensor, Tensor],
                     val: ImageArrays | HeldOut | None, env: DistEnv, final: bool = False) -> dict[str, Any]:
    """``evaluate_model`` with the test (and validation) set split over the ranks and the correct counts
    summed: every ``*_acc`` is the whole set's; ``test_n`` counts every rank's examples. The same on every
    rank (a collective). AutoAttack runs on the first ``eval.autoattack_n`` test examples, split too."""
    images, labels = test
    n = labels.shape[0]
    aa = final and cfg.eval.autoattack
    first = min(cfg.eval.autoattack_n, n) if aa and cfg.eval.autoattack_n is not None else (n if aa else 0)
    rows = _rank_rows(n, first, env)
    a0, a1 = shard_range(first, env.rank, env.world_size)
    local_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, autoattack_n=a1 - a0)) if aa else cfg
    v0, v1 = shard_range(0 if val is None else val.labels.shape[0], env.rank, env.world_size)
    vshard = None if val is None else dataclasses.replace(val, images=val.images[v0:v1], labels=val.labels[v0:v1])
    res = evaluate_model(model, objective, local_cfg, (images[rows], labels[rows]), vshard, env.device, final)
    accs = {k: v for k, v in res.items() if k.endswith("_acc") and isinstance(v, float)}
    counts = {k: a1 - a0 if k == "test_autoattack_acc" else v1 - v0 if k.startswith("val_") else rows.numel()
              for k in accs}
    for k in accs:  # keys differ in their example counts: reduce one at a time (few keys, once per epoch)
        res[k] = reduce_accuracies({k: accs[k]}, counts[k], env)[k]
    if "test_n" in res:
        dev = env.device if env.backend == "nccl" else "cpu"
        res["test_n"] = int(sum_counts(torch.tensor([float(res["test_n"])], device=dev), env)[0])
    return res
