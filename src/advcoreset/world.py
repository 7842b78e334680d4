"""Multi-process training pieces that live outside the training loop, on PyTorch's own ``torch.distributed``.

Launched by ``torchrun --nproc_per_node=N -m advcoreset train ...`` (one process per device), or by plain
``python -m advcoreset train ...``, which is a world of one: no process group, exactly the single-process
behaviour. The loop calls, per run and per step:

- ``init_distributed(cfg.device)`` -> ``DistEnv`` (rank, world size, this rank's device, backend: NCCL on
  CUDA, gloo on CPU); ``env.is_main`` decides who writes files; ``shutdown(env)`` at the end.
- ``convert_sync_bn(model, env, setting)`` then ``wrap_ddp(model, env)``.
- ``rank_batches(indices, weights, generator, rank, world, global_batch)``: the epoch's global order (the
  same permutation on every rank, drawn from the shared generator exactly as one process draws it), cut
  into global batches of ``optim.batch_size``, each split into disjoint contiguous per-rank slices.
- ``iterate_rank_batches``: the same as a drop-in for ``data.iterate_batches`` (augmentation included).
- ``loss_norm(batch, world)``: the normaliser to pass as ``norm=`` to the objective, so that DDP's gradient
  average over ranks equals the single-process weighted-mean gradient of the whole global batch.
- ``shard_range`` and ``reduce_accuracies``: evaluation split across ranks, correct counts summed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from advcoreset.data.loader import Batch, to_float
from advcoreset.selection.distributed import shard_range

__all__ = ["DistEnv", "DistributedError", "RankBatch", "convert_sync_bn", "default_threads", "global_weight_sum",
           "init_distributed", "iterate_rank_batches", "launch_info", "loss_norm", "rank_batches", "rank_crop_flip",
           "rank_device", "reduce_accuracies", "seed_rank", "shard_range", "shutdown", "sum_counts", "unwrap",
           "use_sync_bn", "wrap_ddp"]


class DistributedError(ValueError):
    """A distributed launch or setting that cannot work; the message says what to change."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. A world of one is the plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    """``nccl``, ``gloo``, or None when no process group exists (world of one)."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics, TensorBoard, checkpoints and results."""
        return self.rank == 0


def launch_info(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without one.

    Raises ``DistributedError`` naming the variable when a value is missing, not an integer or out of
    range, before any process group is created."""
    if "WORLD_SIZE" not in environ:
        return 0, 1, 0
    vals: dict[str, int] = {}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = environ.get(key)
        if raw is None and key != "WORLD_SIZE" and environ["WORLD_SIZE"].strip() == "1":
            raw = "0"
        if raw is None:
            raise DistributedError(f"{key} is not set but WORLD_SIZE is; launch with torchrun "
                                   "(it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
        try:
            vals[key] = int(raw)
        except ValueError:
            raise DistributedError(f"{key}={raw!r} is not an integer; launch with torchrun") from None
    world, rank, local = vals["WORLD_SIZE"], vals["RANK"], vals["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"inconsistent launch: RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}; "
                               "need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    if world > 1:
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(key):
                raise DistributedError(f"{key} is not set for a {world}-process job; launch with torchrun")
    return rank, world, local


def rank_device(device: str, local_rank: int, world_size: int) -> torch.device:
    """The device of one rank: ``auto`` -> CUDA when available else CPU; in a multi-process job every
    CUDA request becomes ``cuda:<LOCAL_RANK>`` (one device per local rank)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise DistributedError(f"device {device!r} was asked for but CUDA is not available; use device=cpu "
                               "or auto")
    if world_size == 1:
        return dev
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible; "
                               f"use torchrun --nproc_per_node <= {count}")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Join the job torchrun started (env:// rendezvous), or return a world of one without a process
    group when the process was not launched by torchrun. NCCL when the rank's device is CUDA, else gloo.

    ``timeout_s`` bounds every collective: a rank that died (kill -9) makes the others fail after it
    instead of hanging, and torchrun then stops the job."""
    rank, world, local = launch_info(os.environ)
    dev = rank_device(device, local, world)
    if world == 1:
        return DistEnv(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank, world, local, dev, backend)


RANK_FREE = ("progress", "threads", "device")
"""Config fields that may differ between the ranks of one job (what each rank shows, its threads, its device)."""


def check_agreement(env: DistEnv, config: dict[str, Any], labels: Tensor) -> None:
    """Under torchrun, before any training: every rank must run the same job. A digest of the resolved config
    (without ``RANK_FREE``) and of the training labels is all-gathered; where any rank's differs, every rank
    raises the same ``DistributedError`` (so all of them exit, none waits in a collective the others never
    reach). A world of one: nothing to check."""
    if not env.is_distributed:
        return
    h = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in RANK_FREE}, sort_keys=True,
                                  default=str).encode())
    h.update(str(tuple(labels.shape)).encode())
    h.update(labels.detach().cpu().long().numpy().tobytes())
    mine = torch.tensor(list(h.digest()[:16]), dtype=torch.int64, device=env.device)
    every = [torch.empty_like(mine) for _ in range(env.world_size)]
    dist.all_gather(every, mine)
    differ = [r for r, d in enumerate(every) if not torch.equal(d, every[0])]
    if differ:
        raise DistributedError(f"the ranks were given different runs: rank(s) {differ} differ from rank 0 in their "
                               "resolved config or training data; launch every rank with the same --config, --set "
                               "and data")


def shutdown(env: DistEnv, synchronize: bool = False) -> None:
    """Leave the process group (no-op for a world of one). ``synchronize`` (a run that ended normally on
    every rank): wait for every rank first, so no rank tears its gloo connections down while a peer still
    uses them (which can abort that peer at exit with "terminate called without an active exception")."""
    if env.is_distributed and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def default_threads(env: DistEnv, environ: Mapping[str, str] | None = None) -> int | None:
    """CPU threads per rank when ``threads`` is unset: the machine's cores shared among the ranks of this
    node (``LOCAL_WORLD_SIZE``), so N gloo ranks do not each start one thread per core. None: leave
    PyTorch's default (a world of one, or CUDA ranks)."""
    if not env.is_distributed or env.device.type == "cuda":
        return None
    environ = os.environ if environ is None else environ
    local_world = int(environ.get("LOCAL_WORLD_SIZE", env.world_size))
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class RankBatch:
    """This rank's part of one global mini-batch."""

    indices: Tensor
    """(b,) int64 positions into the training array (b >= 1)."""
    weights: Tensor
    """(b,) float per-example weights; a stand-in example (``padded``) has weight 0."""
    start: int
    stop: int
    """This rank's slice [start, stop) of the global batch: per-batch random draws (augmentation) are made
    for all ``global_size`` examples on every rank, in the same order, and sliced with it."""
    global_size: int
    """Examples in the global batch (what one process would see)."""
    global_weight: Tensor
    """Scalar: the global batch's weight sum, summed in the order one process sums it."""
    padded: bool = False
    """The global batch had fewer examples than ranks and this rank none: its first example stands in with
    weight 0, so every rank still runs the step's collectives and contributes nothing to the update."""


def rank_batches(indices: Tensor, weights: Tensor, generator: torch.Generator, rank: int, world: int,
                 global_batch: int) -> Iterator[RankBatch]:
    """This rank's mini-batches for one epoch over ``indices`` (a coreset, a resampled draw, or all).

    The order is ``torch.randperm(k, generator=generator)``, the draw ``data.iterate_batches`` makes, so
    with ``world == 1`` the batches are exactly the single-process ones; every rank holds the same
    generator state, hence the same order, and takes the contiguous slice ``shard_range`` gives it of each
    global batch of ``global_batch`` examples (``optim.batch_size`` is the global batch).

    Args:
        indices: (k,) int64 positions; weights: (k,) their weights (same device as ``indices``).
        generator: the run's CPU generator (consumed exactly as one process consumes it).
    """
    if global_batch < 1:
        raise ValueError(f"the global batch size must be >= 1, got {global_batch}")
    if indices.shape != weights.shape or indices.dim() != 1:
        raise ValueError(f"indices and weights must both be (k,), got {tuple(indices.shape)} and "
                         f"{tuple(weights.shape)}")
    k = indices.numel()
    order = torch.randperm(k, generator=generator).to(indices.device)
    for start in range(0, k, global_batch):
        sel = order[start:start + global_batch]
        w_all = weights[sel]
        lo, hi = shard_range(sel.numel(), rank, world)
        padded = hi == lo
        mine = sel[:1] if padded else sel[lo:hi]
        w = torch.zeros_like(w_all[:1]) if padded else w_all[lo:hi]
        yield RankBatch(indices[mine], w, lo, hi, sel.numel(), w_all.sum(), padded)


def rank_crop_flip(x: Tensor, batch: RankBatch, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """``data.loader.random_crop_flip`` of the whole global batch, applied to this rank's slice only.

    The random draws are made for all ``batch.global_size`` examples, in the loader's order (crop offsets
    (2, B) when ``padding``, then flip coins (B,) when ``flip``), so the generator advances alike on every
    rank and each example gets the augmentation one process would give it.
    x: (b, C, H, W) float, this rank's images (a padded stand-in included) -> (b, C, H, W)."""
    n, lo, hi = batch.global_size, batch.start, batch.stop
    rows = slice(0, 1) if batch.padded else slice(lo, hi)
    b, _, h, w = x.shape
    if padding > 0:
        xp = nn.functional.pad(x, (padding, padding, padding, padding))
        off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)[:, rows].to(x.device)
        r = torch.arange(h, device=x.device).unsqueeze(0) + off[0].unsqueeze(1)
        c = torch.arange(w, device=x.device).unsqueeze(0) + off[1].unsqueeze(1)
        bi = torch.arange(b, device=x.device).view(b, 1, 1)
        x = xp.permute(0, 2, 3, 1)[bi, r.unsqueeze(2), c.unsqueeze(1)].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5)[rows].to(x.device).view(b, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    return x.contiguous()


def iterate_rank_batches(images: Tensor, labels: Tensor, indices: Tensor, weights: Tensor, batch_size: int,
                         generator: torch.Generator, env: DistEnv, *, padding: int = 0, flip: bool = False,
                         memory_format: torch.memory_format = torch.contiguous_format
                         ) -> Iterator[tuple[Batch, RankBatch]]:
    """Drop-in for ``data.loader.iterate_batches`` in a DDP loop: this rank's ``Batch`` of every global
    batch of ``batch_size``, augmented as one process would augment it, with its ``RankBatch`` (for
    ``loss_norm`` and for leaving stand-ins out of the epoch's counts). A world of one yields exactly
    ``iterate_batches``' batches.

    images: (N, C, H, W) uint8 on the training device; labels: (N,); indices, weights: (k,)."""
    for rb in rank_batches(indices, weights, generator, env.rank, env.world_size, batch_size):
        dev_idx = rb.indices.to(images.device)
        x = to_float(images[dev_idx])
        if padding or flip:
            x = rank_crop_flip(x, rb, padding, flip, generator)
        yield Batch(x.contiguous(memory_format=memory_format), labels[dev_idx], rb.weights.to(images.device),
                    rb.indices), rb


def seed_rank(seed: int, env: DistEnv, epoch: int = 0) -> None:
    """Give each rank its own global random stream (attack random starts draw from it), derived from
    (seed, epoch, rank). Called at the start of every epoch, after the model is built, it makes a resumed
    job draw what an uninterrupted one draws, although the checkpoint holds rank 0's stream only. A world
    of one is left untouched: its stream stays the single-process one."""
    if env.is_distributed:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, env.rank]).generate_state(1)[0]))


def loss_norm(batch: RankBatch, world: int, global_norm: Tensor | float | None = None) -> Tensor | float:
    """The ``norm`` to pass to ``Objective.loss_at`` for this rank's slice.

    DDP averages gradients over the ranks, so a rank's loss sum_{i in slice} w_i l_i / (N / world) averages
    to sum_{i in batch} w_i l_i / N, the single-process weighted mean. N is ``global_norm`` when the weight
    rule fixes it (``optim.weight_norm=epoch``: ``batch.global_size * mean weight``), else the global
    batch's weight sum."""
    n = batch.global_weight if global_norm is None else global_norm
    return n / world


def global_weight_sum(local_weights: Tensor, env: DistEnv) -> Tensor:
    """All-reduced sum of the weights every rank holds: the global normaliser for a loader that does not
    know the whole global batch (``rank_batches`` does, and needs no communication). Scalar tensor."""
    total = local_weights.float().sum().reshape(1)
    if env.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total[0]


# ------------------------------------------------------------------------------------- model wrappers
def use_sync_bn(setting: bool | None, env: DistEnv) -> bool:
    """Whether BatchNorm layers become ``SyncBatchNorm``. ``None`` (auto): on when the world size is > 1
    and the ranks run on CUDA. PyTorch's SyncBatchNorm has no CPU kernel, so asking for it on CPU ranks is
    an error; a world of one has nothing to synchronise."""
    if not env.is_distributed:
        return False
    if env.device.type != "cuda":
        if setting:
            raise DistributedError("optim.sync_bn=true needs CUDA ranks (PyTorch's SyncBatchNorm has no CPU "
                                   "kernel); set optim.sync_bn=false or leave it unset on CPU")
        return False
    return True if setting is None else bool(setting)


def convert_sync_bn(model: nn.Module, env: DistEnv, setting: bool | None = None) -> nn.Module:
    """``model`` with its BatchNorm layers turned into SyncBatchNorm when ``use_sync_bn`` says so (their
    running statistics and affine parameters carried over), else ``model`` unchanged."""
    if not use_sync_bn(setting, env):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``env.device``); ``model`` itself for a world
    of one. Attacks must run on ``unwrap(model)``: their input-gradient passes are not training steps and
    must not enter DDP's gradient reduction."""
    if not env.is_distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (checkpoints store its state_dict, without ``module.`` keys)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------- evaluation
def sum_counts(counts: Tensor, env: DistEnv) -> Tensor:
    """Element-wise sum over ranks of per-rank counts (any shape), as float64; a copy for a world of one."""
    total = counts.detach().to(torch.float64).clone()
    if env.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def reduce_accuracies(acc: Mapping[str, float], n_local: int, env: DistEnv) -> dict[str, float]:
    """Whole-set accuracies from each rank's accuracies on its ``shard_range`` of the evaluation set.

    Args:
        acc: name -> this rank's accuracy in [0, 1] over ``n_local`` examples; every rank passes the same
            names in the same order.
    Returns name -> correct / total over all ranks."""
    keys = list(acc)
    local = torch.tensor([round(acc[k] * n_local) for k in keys] + [n_local], dtype=torch.float64,
                         device=env.device if env.backend == "nccl" else "cpu")
    total = sum_counts(local, env).cpu()
    n = float(total[-1])
    if n <= 0:
        raise ValueError("no evaluation examples on any rank")
    return {k: float(total[i]) / n for i, k in enumerate(keys)}
