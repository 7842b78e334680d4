"""Sharded coreset selection: each rank attacks and differentiates only its slice of the training set.

Two modes (``selection.distributed``), both ending with the same ``Selection`` (global positions, sorted)
on every rank:

- ``gather`` (exact): classes are spread over the ranks (``class_owners``); every rank sends the rows of
  a class to the class's owner (one all-to-all), the registered selector (``build_selector``) runs there
  on the class's rows in global order, and only indices and weights come back (an all-gather). Per class
  the solver sees the very matrix one process sees, so the coreset is the single-process one whenever
  the solver draws no randomness (CRAIG on classes <= ``max_class_size``, GradMatch without random fill)
  and the selection is not batch-wise (its batch split is drawn class after class from one generator);
  owners draw what randomness they need from ``solver_seed``, so every rank's run generator stays in step.
- ``partition`` (GreeDi-style, no gradient moves): each rank runs the selector on its own slice, so each
  class gets ceil(fraction * its rows on the rank) there; only indices and weights travel. With
  ``second_round=True`` each rank first proposes up to a whole class budget (fraction * world), the
  proposals' gradients and weights go to the class owners, and a weighted solve there (CRAIG with the
  proposals' weights as point weights, GradMatch matching their weighted sum) keeps ceil(fraction * n_c).

Bytes are counted as the payload each rank sends to other ranks: all-to-all rows addressed elsewhere,
all-gather ``size * (world - 1)``, all-reduce ``2 (world - 1) / world * size`` (a ring's send volume).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from advcoreset.config import SelectionConfig
from advcoreset.data.loader import to_float
from advcoreset.objectives.base import Objective, eval_mode
from advcoreset.progress import Task
from advcoreset.selection.base import Selection, approximation_error, select_round
from advcoreset.selection.craig import craig
from advcoreset.selection.gradients import last_layer_grads
from advcoreset.selection.gradmatch import gradmatch_solve, ridge
from advcoreset.selection.selectors import build_selector, class_budget

MODES = ("gather", "partition")


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ by at most one, in rank order."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return rank * n // world, (rank + 1) * n // world


@dataclass
class GradShard:
    """One rank's slice of the selection gradients."""

    grads: Tensor
    """(n_r, d) float per-example gradients."""
    labels: Tensor
    """(n_r,) int64 classes in [0, num_classes)."""
    indices: Tensor
    """(n_r,) int64 global positions in the training set (disjoint across ranks)."""


@dataclass
class ShardedSelection:
    selection: Selection
    """The coreset over global positions, identical on every rank."""
    mode: str
    bytes_sent: int
    """Payload this rank sent to other ranks during the round."""
    bytes_total: int
    """Payload all ranks sent together."""
    times: dict[str, float] = field(default_factory=dict)
    """Seconds on this rank: ``communication`` and ``solver`` (plus ``attack`` and ``gradient`` once the
    caller merges ``shard_grads``' times)."""
    grad_error: float | None = None
    """||sum_i g_i - sum_j w_j g_j|| / ||sum_i g_i|| over the whole training set."""

    def record(self) -> dict[str, Any]:
        """JSON-serialisable fields for the selection record of ``metrics.jsonl``."""
        return {"distributed_mode": self.mode, "bytes_sent_rank": self.bytes_sent,
                "bytes_total": self.bytes_total, "grad_error": self.grad_error,
                **{f"time_selection_{k}": v for k, v in self.times.items()}}


class _Comm:
    """Collectives of one selection round on the default process group, with byte and time accounting."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.bytes = 0
        self.seconds = 0.0

    def _timed(self, fn: Any, *args: Any) -> None:
        t0 = time.perf_counter()
        fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0

    def all_reduce(self, t: Tensor) -> Tensor:
        self.bytes += int(2 * (self.world - 1) * t.numel() * t.element_size() // self.world)
        self._timed(dist.all_reduce, t)
        return t

    def all_to_all(self, rows: Tensor, send: list[int]) -> Tensor:
        """Rows (n, ...) grouped by destination rank with ``send[q]`` rows for rank q -> received rows."""
        rows = rows.to(self.device)
        counts = torch.tensor(send, dtype=torch.int64, device=self.device)
        recv_counts = torch.empty_like(counts)
        self._timed(dist.all_to_all_single, recv_counts, counts)
        recv = recv_counts.tolist()
        out = torch.empty((sum(recv), *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        self.bytes += (sum(send) - send[self.rank]) * math.prod(rows.shape[1:]) * rows.element_size()
        self._timed(dist.all_to_all_single, out, rows.contiguous(), recv, send)
        return out

    def all_gather(self, t: Tensor) -> Tensor:
        """Concatenation over ranks (in rank order) of 1-D tensors of any lengths."""
        n = torch.tensor([t.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.empty_like(n) for _ in range(self.world)]
        self._timed(dist.all_gather, sizes, n)
        lens = [int(s) for s in sizes]
        pad = torch.zeros(max(lens), dtype=t.dtype, device=self.device)
        pad[:t.numel()] = t
        outs = [torch.empty_like(pad) for _ in range(self.world)]
        self.bytes += t.numel() * t.element_size() * (self.world - 1)
        self._timed(dist.all_gather, outs, pad)
        return torch.cat([o[:m] for o, m in zip(outs, lens, strict=True)])


def round_bytes(mode: str, world: int, d: int, k: int, num_classes: int, rows_moved: float,
                grad_bytes: int = 4, second_round: bool = False) -> dict[str, float]:
    """Payload bytes one selection round sends, all ranks together, by the accounting of this module.

    Args:
        mode: ``gather`` or ``partition``; world: ranks; d: gradient length; k: coreset size.
        rows_moved: gradient rows that leave their rank: ``gather``: rows whose class another rank owns
            (about n (world - 1) / world); ``partition`` with ``second_round``: such proposals (about
            world k (world - 1) / world); ignored otherwise.
        grad_bytes: bytes per gradient entry (4: float32).
    Returns {"gradients", "class_sizes", "indices_weights", "grad_error", "total"}; metadata (counts,
    per-class statistics) is not payload and not counted."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ring = 2 * (world - 1)  # all ranks' ring all-reduce send volume, in units of the reduced tensor's size
    moves = mode == "gather" or second_round
    extra = 4 if mode == "partition" else 0  # the proposals' float32 first-round weights travel with them
    out = {"gradients": rows_moved * (d * grad_bytes + 16 + extra) if moves else 0.0,
           "class_sizes": float(ring * num_classes * 8) if moves else 0.0,
           "indices_weights": float(k * 12 * (world - 1)),
           "grad_error": float(ring * 2 * d * 8)}
    out["total"] = sum(out.values())
    return out


def class_owners(class_sizes: Tensor, world: int) -> Tensor:
    """(C,) rank owning each class: classes by decreasing n_c^2 (a CRAIG / GradMatch solve costs about
    that), each to the rank with the least load so far (lowest rank on ties). Depends only on the sizes,
    so every rank computes the same map."""
    sizes = [int(s) for s in class_sizes.tolist()]
    load = [0] * world
    owner = [0] * len(sizes)
    for c in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c)):
        r = min(range(world), key=lambda q: (load[q], q))
        owner[c] = r
        load[r] += sizes[c] ** 2
    return torch.tensor(owner, dtype=torch.int64)


def _check_shard(shard: GradShard, num_classes: int) -> None:
    n = shard.labels.shape[0]
    if shard.grads.dim() != 2 or shard.grads.shape[0] != n or shard.indices.shape != (n,):
        raise ValueError(f"shard: grads (n, d), labels (n,) and indices (n,) must agree, got "
                         f"{tuple(shard.grads.shape)}, {tuple(shard.labels.shape)}, {tuple(shard.indices.shape)}")
    if n and (int(shard.labels.min()) < 0 or int(shard.labels.max()) >= num_classes):
        raise ValueError(f"shard: labels must lie in [0, {num_classes}), got [{int(shard.labels.min())}, "
                         f"{int(shard.labels.max())}]")


def _sorted(shard: GradShard) -> GradShard:
    order = torch.argsort(shard.indices)
    return GradShard(shard.grads[order], shard.labels[order], shard.indices[order])


def _send_to_owners(comm: _Comm, shard: GradShard, owners: Tensor, extra: Tensor | None = None
                    ) -> tuple[GradShard, Tensor | None]:
    """Every row to the owner of its class (one all-to-all per field); received rows in global order."""
    dest = owners.to(shard.labels.device)[shard.labels]
    order = torch.sort(dest, stable=True).indices
    send = torch.bincount(dest, minlength=comm.world).tolist()
    moved = [comm.all_to_all(t[order], send) for t in (shard.grads, shard.labels, shard.indices)]
    got_extra = None if extra is None else comm.all_to_all(extra[order], send)
    back = torch.argsort(moved[2])
    return GradShard(moved[0][back], moved[1][back], moved[2][back]), \
        (None if got_extra is None else got_extra[back])


def _share(comm: _Comm, picks: Tensor, weights: Tensor) -> Selection:
    """All ranks' (global positions, weights) -> one Selection sorted by position, on every rank."""
    idx = comm.all_gather(picks.to(comm.device, torch.int64))
    w = comm.all_gather(weights.to(comm.device, torch.float32))
    order = torch.argsort(idx)
    return Selection(idx[order], w[order])


def _merge_stats(local: dict[str, Any], mode: str) -> dict[str, Any]:
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    classes: dict[str, Any] = {}
    for p in parts:
        classes.update(p.get("classes", {}))
    ordered = dict(sorted(classes.items(), key=lambda kv: int(kv[0])))
    return {"method": local.get("method"), "mode": mode, "classes": ordered,
            "solver_seconds_max": max(float(p.get("solver_seconds", 0.0)) for p in parts)}


def _grad_error(comm: _Comm, shard: GradShard, sel: Selection, block: int = 1024) -> float:
    """Whole-set relative gradient error from per-rank float64 sums (one all-reduce of 2 d numbers)."""
    dev = shard.grads.device
    w = torch.zeros(shard.indices.numel(), dtype=torch.float64, device=dev)
    if sel.indices.numel():
        mine, chosen = shard.indices.to(dev), sel.indices.to(dev)
        pos = torch.searchsorted(chosen, mine).clamp_max(chosen.numel() - 1)
        found = chosen[pos] == mine
        w[found] = sel.weights.to(dev)[pos[found]].double()
    sums = torch.zeros(2, shard.grads.shape[1], dtype=torch.float64, device=dev)
    for i in range(0, shard.grads.shape[0], block):
        g = shard.grads[i:i + block].double()
        sums[0] += g.sum(0)
        sums[1] += w[i:i + block] @ g
    sums = comm.all_reduce(sums.to(comm.device))
    return float((sums[0] - sums[1]).norm() / sums[0].norm().clamp_min(1e-30))


def _finish(comm: _Comm, mode: str, shard: GradShard, sel: Selection, solver_s: float,
            local_stats: dict[str, Any]) -> ShardedSelection:
    err = _grad_error(comm, shard, sel)
    sel.stats = _merge_stats(local_stats, mode)
    sent = comm.bytes
    total = torch.tensor([float(sent)], dtype=torch.float64, device=comm.device)
    dist.all_reduce(total)
    return ShardedSelection(sel, mode, sent, int(total[0]), {"communication": comm.seconds, "solver": solver_s},
                            err)


def gather_select(cfg: SelectionConfig, seed: int, shard: GradShard, num_classes: int,
                  solver_seed: int, progress: Task | None = None) -> ShardedSelection:
    """``gather`` mode (see the module docstring); collective: every rank calls it with its own shard."""
    _check_shard(shard, num_classes)
    selector = build_selector(cfg, seed)
    comm = _Comm(shard.grads.device if dist.get_backend() == "nccl" else torch.device("cpu"))
    shard = _sorted(shard)
    sizes = comm.all_reduce(torch.bincount(shard.labels, minlength=num_classes).to(comm.device))
    owned, _ = _send_to_owners(comm, shard, class_owners(sizes.cpu(), comm.world))
    t0 = time.perf_counter()
    picks, weights, stats = owned.indices[:0], torch.empty(0), {"method": cfg.method}
    if owned.labels.numel():
        sel = selector.select(owned.grads, owned.labels, torch.Generator().manual_seed(solver_seed), progress=progress)
        picks, weights, stats = owned.indices[sel.indices.to(owned.indices.device)], sel.weights, sel.stats
    solver_s = time.perf_counter() - t0
    return _finish(comm, "gather", shard, _share(comm, picks, weights), solver_s, stats)


def partition_select(cfg: SelectionConfig, seed: int, shard: GradShard, num_classes: int, solver_seed: int,
                     second_round: bool = False, progress: Task | None = None) -> ShardedSelection:
    """``partition`` mode (see the module docstring); collective: every rank calls it with its own shard."""
    _check_shard(shard, num_classes)
    if second_round and cfg.method not in ("craig", "gradmatch"):
        raise ValueError(f"selection.method={cfg.method!r}: the partition second round needs craig or gradmatch")
    if second_round and cfg.batchwise:
        raise ValueError("the partition second round chooses single examples; set selection.batchwise=false "
                         "or drop the second round")
    comm = _Comm(shard.grads.device if dist.get_backend() == "nccl" else torch.device("cpu"))
    shard = _sorted(shard)
    first = dataclasses.replace(cfg, fraction=min(1.0, cfg.fraction * comm.world)) if second_round else cfg
    gen = torch.Generator().manual_seed(solver_seed + comm.rank)
    t0 = time.perf_counter()
    sel = build_selector(first, seed).select(shard.grads, shard.labels, gen, progress=progress)
    solver_s = time.perf_counter() - t0
    local = sel.indices.to(shard.indices.device)
    if not second_round:
        return _finish(comm, "partition", shard, _share(comm, shard.indices[local], sel.weights), solver_s,
                       sel.stats)
    sizes = comm.all_reduce(torch.bincount(shard.labels, minlength=num_classes).to(comm.device))
    cand = GradShard(shard.grads[local], shard.labels[local], shard.indices[local])
    owned, w1 = _send_to_owners(comm, cand, class_owners(sizes.cpu(), comm.world),
                                sel.weights.to(shard.grads.device, torch.float32))
    assert w1 is not None
    t0 = time.perf_counter()
    picks, weights = _weighted_round(cfg, owned, w1, sizes.cpu(), gen)
    solver_s += time.perf_counter() - t0
    return _finish(comm, "partition", shard, _share(comm, picks, weights), solver_s,
                   {"method": cfg.method, "second_round": True})


def _weighted_round(cfg: SelectionConfig, cand: GradShard, w1: Tensor, sizes: Tensor,
                    gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per owned class: keep ceil(fraction * n_c) of the proposals, weighted to stand for the whole class.
    cand: proposals (m, d) in global order, w1: (m,) their first-round weights."""
    picks, weights = [cand.indices[:0]], [torch.empty(0)]
    for c in torch.unique(cand.labels).tolist():
        rows = torch.nonzero(cand.labels == c).squeeze(1)
        g, u = cand.grads[rows], w1[rows]
        k = class_budget(cfg.fraction, int(sizes[c]))
        if cfg.method == "craig":
            i, w = craig(g, k, max_size=cfg.max_class_size, generator=gen, point_weights=u)
        else:
            target = (u.unsqueeze(1) * g.float()).sum(0)
            if k >= g.shape[0]:
                i, w = torch.arange(g.shape[0]), u.float().cpu()
            else:
                res = gradmatch_solve(g, k, lam=ridge(g, cfg.lam, cfg.lam_relative), tol=cfg.tol, generator=gen,
                                      target=target)
                i, w = res.indices, res.weights
        picks.append(cand.indices[rows[i.to(rows.device)]])
        weights.append(w.float().cpu())
    return torch.cat(picks), torch.cat(weights)


def select_sharded(mode: str, cfg: SelectionConfig, seed: int, shard: GradShard | None, all_labels: Tensor,
                   generator: torch.Generator, solver_seed: int, second_round: bool = False,
                   progress: Task | None = None, round_index: int = 0) -> ShardedSelection:
    """The one call for the trainer: a selector without gradients (full, random, random_fixed, rs2) runs on
    every rank over ``all_labels`` (N,) with the shared ``generator`` (same draw everywhere, nothing
    moves); a gradient selector runs in ``mode`` on this rank's ``shard`` (``shard_grads``). ``progress``:
    a task this rank's per-class solvers advance by one per class (the classes it owns in ``gather``)."""
    if mode not in MODES:
        raise ValueError(f"selection.distributed must be one of {MODES}, got {mode!r}")
    num_classes = int(all_labels.max()) + 1 if all_labels.numel() else 0
    selector = build_selector(cfg, seed)
    if not selector.needs_grads:
        sel = select_round(selector, None, all_labels, generator, round_index=round_index)
        return ShardedSelection(sel, mode, 0, 0, {"solver": 0.0})
    if shard is None:
        raise ValueError(f"selection.method={cfg.method!r} needs this rank's gradient shard, got None")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return _one_process(selector, mode, _sorted(shard), generator, progress)
    if mode == "gather":
        return gather_select(cfg, seed, shard, num_classes, solver_seed, progress)
    return partition_select(cfg, seed, shard, num_classes, solver_seed, second_round, progress)


def _one_process(selector: Any, mode: str, shard: GradShard, generator: torch.Generator,
                 progress: Task | None = None) -> ShardedSelection:
    """A world of one: the plain selector on the whole (sorted) shard with the run's generator, exactly
    the single-process selection; nothing moves."""
    t0 = time.perf_counter()
    sel = selector.select(shard.grads, shard.labels, generator, progress=progress)
    solver_s = time.perf_counter() - t0
    err = approximation_error(shard.grads, sel.indices.to(shard.grads.device), sel.weights.to(shard.grads.device))
    glob = Selection(shard.indices[sel.indices.to(shard.indices.device)], sel.weights, sel.stats)
    return ShardedSelection(glob, mode, 0, 0, {"communication": 0.0, "solver": solver_s}, err)


class _GivenPoints(Objective):
    """An objective whose attack returns precomputed adversarial inputs, so the gradient pass can be
    timed apart from the attack without re-implementing ``last_layer_grads``."""

    def __init__(self, inner: Objective, x_adv: Tensor) -> None:
        super().__init__()
        self.inner, self.x_adv = inner, x_adv

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.x_adv

    def points(self, x: Tensor, x_adv: Tensor) -> list[Tensor]:
        return self.inner.points(x, x_adv)

    def loss_from_logits(self, logits: list[Tensor], y: Tensor) -> Tensor:
        return self.inner.loss_from_logits(logits, y)


def shard_grads(model: nn.Module, objective: Objective, images: Tensor, labels: Tensor, rank: int, world: int,
                batch_size: int, features: str = "last_layer",
                autocast: Callable[[], AbstractContextManager[Any]] | None = None, progress: Task | None = None
                ) -> tuple[GradShard, dict[str, float]]:
    """This rank's ``shard_range`` of the training set: selection attack, then last-layer gradients.

    images: (N, C, H, W) uint8 or float in [0, 1] on the model's device (unaugmented); labels: (N,).
    ``progress``: a task advanced by the images of each batch done. Returns the shard and its seconds
    {"attack", "gradient"}."""
    lo, hi = shard_range(labels.numel(), rank, world)
    cuda = images.device.type == "cuda"
    cast = autocast or nullcontext
    times = {"attack": 0.0, "gradient": 0.0}
    parts = []
    for s in range(lo, hi, batch_size):
        x, y = to_float(images[s:min(s + batch_size, hi)]), labels[s:min(s + batch_size, hi)]
        t0 = time.perf_counter()
        with eval_mode(model), cast():
            x_adv = objective.attack(model, x, y)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        with cast():
            parts.append(last_layer_grads(model, _GivenPoints(objective, x_adv), x, y, features))
        if cuda:
            torch.cuda.synchronize()
        times["attack"] += t1 - t0
        times["gradient"] += time.perf_counter() - t1
        if progress is not None:
            progress.update(int(y.numel()))
    d = parts[0].shape[1] if parts else 0
    grads = torch.cat(parts) if parts else torch.empty(0, d, device=images.device)
    return GradShard(grads, labels[lo:hi], torch.arange(lo, hi, device=labels.device)), times
