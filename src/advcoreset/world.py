"""The process world: which process of a job this is, at the ground floor (only torch below it).

``torchrun --nproc_per_node=N -m advcoreset train ...`` starts N processes (one per device); plain ``python -m
advcoreset train ...`` is a world of one: no process group, exactly the single-process run. Every part reads the
world instead of keeping a copy of itself for ranks: the data batches take ``rank, world`` (a global batch's draw,
this rank's slice), the selection pass a row range (``shard_range``), the sharded selector the world.

- ``init_distributed(cfg.device)`` -> ``World`` (rank, world size, this rank's device, backend: NCCL on CUDA,
  gloo on CPU); ``world.is_main`` decides who writes files; ``shutdown(world)`` at the end.
- ``convert_sync_bn(model, world, setting)`` then ``wrap_ddp(model, world)``.
- ``shard_range(n, rank, world)``: a rank's contiguous share of n items (batches, the selection pass, evaluation).
- ``sum_counts`` and ``reduce_accuracies``: counts and accuracies summed over the ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistributedError", "World", "check_agreement", "convert_sync_bn", "default_threads", "init_distributed",
           "launch_info", "rank_device", "reduce_accuracies", "shard_range", "shutdown", "sum_counts", "unwrap",
           "use_sync_bn", "wrap_ddp"]


class DistributedError(ValueError):
    """A distributed launch or setting that cannot work; the message says what to change."""


@dataclass(frozen=True)
class World:
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

    def seed_epoch(self, seed: int, epoch: int = 0) -> None:
        """Give each rank its own global random stream (attack random starts draw from it), derived from
        (seed, epoch, rank). Called at the start of every epoch, after the model is built, it makes a resumed
        job draw what an uninterrupted one draws, although the checkpoint holds rank 0's stream only. A world
        of one is left untouched: its stream stays the single-process one."""
        if self.is_distributed:
            torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0]))


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ by at most one, in rank order."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return rank * n // world, (rank + 1) * n // world


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


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> World:
    """Join the job torchrun started (env:// rendezvous), or return a world of one without a process
    group when the process was not launched by torchrun. NCCL when the rank's device is CUDA, else gloo.

    ``timeout_s`` bounds every collective: a rank that died (kill -9) makes the others fail after it
    instead of hanging, and torchrun then stops the job."""
    rank, size, local = launch_info(os.environ)
    dev = rank_device(device, local, size)
    if size == 1:
        return World(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=size,
                                timeout=timedelta(seconds=timeout_s))
    return World(rank, size, local, dev, backend)


RANK_FREE = ("progress", "threads", "device")
"""Config fields that may differ between the ranks of one job (what each rank shows, its threads, its device)."""


def check_agreement(world: World, config: dict[str, Any], labels: Tensor) -> None:
    """Under torchrun, before any training: every rank must run the same job. A digest of the resolved config
    (without ``RANK_FREE``) and of the training labels is all-gathered; where any rank's differs, every rank
    raises the same ``DistributedError`` (so all of them exit, none waits in a collective the others never
    reach). A world of one: nothing to check."""
    if not world.is_distributed:
        return
    h = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in RANK_FREE}, sort_keys=True,
                                  default=str).encode())
    h.update(str(tuple(labels.shape)).encode())
    h.update(labels.detach().cpu().long().numpy().tobytes())
    mine = torch.tensor(list(h.digest()[:16]), dtype=torch.int64, device=world.device)
    every = [torch.empty_like(mine) for _ in range(world.world_size)]
    dist.all_gather(every, mine)
    differ = [r for r, d in enumerate(every) if not torch.equal(d, every[0])]
    if differ:
        raise DistributedError(f"the ranks were given different runs: rank(s) {differ} differ from rank 0 in their "
                               "resolved config or training data; launch every rank with the same --config, --set "
                               "and data")


def shutdown(world: World, synchronize: bool = False) -> None:
    """Leave the process group (no-op for a world of one). ``synchronize`` (a run that ended normally on
    every rank): wait for every rank first, so no rank tears its gloo connections down while a peer still
    uses them (which can abort that peer at exit with "terminate called without an active exception")."""
    if world.is_distributed and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def default_threads(world: World, environ: Mapping[str, str] | None = None) -> int | None:
    """CPU threads per rank when ``threads`` is unset: the machine's cores shared among the ranks of this
    node (``LOCAL_WORLD_SIZE``), so N gloo ranks do not each start one thread per core. None: leave
    PyTorch's default (a world of one, or CUDA ranks)."""
    if not world.is_distributed or world.device.type == "cuda":
        return None
    environ = os.environ if environ is None else environ
    local_world = int(environ.get("LOCAL_WORLD_SIZE", world.world_size))
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


# ------------------------------------------------------------------------------------- model wrappers
def use_sync_bn(setting: bool | None, world: World) -> bool:
    """Whether BatchNorm layers become ``SyncBatchNorm``. ``None`` (auto): on when the world size is > 1
    and the ranks run on CUDA. PyTorch's SyncBatchNorm has no CPU kernel, so asking for it on CPU ranks is
    an error; a world of one has nothing to synchronise."""
    if not world.is_distributed:
        return False
    if world.device.type != "cuda":
        if setting:
            raise DistributedError("optim.sync_bn=true needs CUDA ranks (PyTorch's SyncBatchNorm has no CPU "
                                   "kernel); set optim.sync_bn=false or leave it unset on CPU")
        return False
    return True if setting is None else bool(setting)


def convert_sync_bn(model: nn.Module, world: World, setting: bool | None = None) -> nn.Module:
    """``model`` with its BatchNorm layers turned into SyncBatchNorm when ``use_sync_bn`` says so (their
    running statistics and affine parameters carried over), else ``model`` unchanged."""
    if not use_sync_bn(setting, world):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, world: World) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``world.device``); ``model`` itself for a world
    of one. Attacks must run on ``unwrap(model)``: their input-gradient passes are not training steps and
    must not enter DDP's gradient reduction."""
    if not world.is_distributed:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (checkpoints store its state_dict, without ``module.`` keys)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------- evaluation
def sum_counts(counts: Tensor, world: World) -> Tensor:
    """Element-wise sum over ranks of per-rank counts (any shape), as float64; a copy for a world of one."""
    total = counts.detach().to(torch.float64).clone()
    if world.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def reduce_accuracies(acc: Mapping[str, float], n_local: int, world: World) -> dict[str, float]:
    """Whole-set accuracies from each rank's accuracies on its ``shard_range`` of the evaluation set.

    Args:
        acc: name -> this rank's accuracy in [0, 1] over ``n_local`` examples; every rank passes the same
            names in the same order.
    Returns name -> correct / total over all ranks."""
    keys = list(acc)
    local = torch.tensor([round(acc[k] * n_local) for k in keys] + [n_local], dtype=torch.float64,
                         device=world.device if world.backend == "nccl" else "cpu")
    total = sum_counts(local, world).cpu()
    n = float(total[-1])
    if n <= 0:
        raise ValueError("no evaluation examples on any rank")
    return {k: float(total[i]) / n for i, k in enumerate(keys)}
