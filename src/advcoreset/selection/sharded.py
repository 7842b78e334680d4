"""Sharded coreset selection: ``ShardedSelector`` wraps any ``Selector`` for a world of ranks that each attack
and differentiate only their slice of the training set (``shard_range``: the selection pass's row range).

Two modes (``selection.distributed``), both ending with the same ``Selection`` (global positions, sorted)
on every rank:

- ``gather`` (exact): classes are spread over the ranks (``class_owners``); every rank sends the rows of
  a class to the class's owner (one all-to-all), the wrapped selector runs there
  on the class's rows in global order, and only indices and weights come back (an all-gather). Per class
  the solver sees the very matrix one process sees, so the coreset is the single-process one whenever
  the solver draws no randomness (CRAIG on classes <= ``max_class_size``, GradMatch without random fill)
  and the selection is not batch-wise (its batch split is drawn class after class from one generator);
  owners draw what randomness they need from ``solver_seed``, so every rank's run generator stays in step.
- ``partition`` (GreeDi-style, no gradient moves): each rank runs the selector on its own slice, so each
  class gets ceil(fraction * its rows on the rank) there; only indices and weights travel. With
  ``second_round=True`` each rank first proposes up to a whole class budget (fraction * world), the
  proposals' gradients and weights go to the class owners, and the wrapped selector runs there with the
  proposals' weights as point weights (``weighted``: CRAIG weighs its facility-location points by them,
  GradMatch matches their weighted sum) and keeps ceil(fraction * n_c) of each class.

Bytes are counted as the payload each rank sends to other ranks: all-to-all rows addressed elsewhere,
all-gather ``size * (world - 1)``, all-reduce ``2 (world - 1) / world * size`` (a ring's send volume).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from advcoreset.progress import Task
from advcoreset.selection.base import Selection, Selector, approximation_error, fraction_of, select_round
from advcoreset.world import World, shard_range

MODES = ("gather", "partition")


@dataclass
class GradShard:
    """One rank's slice of the selection gradients."""

    grads: Tensor
    """(n_r, d) float per-example gradients."""
    labels: Tensor
    """(n_r,) int64 classes in [0, num_classes)."""
    indices: Tensor
    """(n_r,) int64 global positions in the training set (disjoint across ranks)."""


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
            local_stats: dict[str, Any]) -> Selection:
    """The round's Selection on every rank: solver stats merged over the ranks, ``record`` with the whole set's
    gradient error and the bytes sent."""
    err = _grad_error(comm, shard, sel)
    sel.stats = _merge_stats(local_stats, mode)
    sent = comm.bytes
    total = torch.tensor([float(sent)], dtype=torch.float64, device=comm.device)
    dist.all_reduce(total)
    sel.record = _record(mode, sent, int(total[0]), {"communication": comm.seconds, "solver": solver_s}, err)
    return sel


def _record(mode: str, sent: int, total: int, times: dict[str, float], error: float | None) -> dict[str, Any]:
    """A sharded round's fields of the selection record: ``bytes_sent_rank`` (payload this rank sent to other
    ranks), ``bytes_total`` (all ranks together), ``grad_error`` (||sum_i g_i - sum_j w_j g_j|| / ||sum_i g_i||
    over the whole training set), this rank's seconds (``time_selection_split``: communication, solver)."""
    return {"distributed_mode": mode, "bytes_sent_rank": sent, "bytes_total": total, "grad_error": error,
            **{f"time_selection_{k}": v for k, v in times.items()}, "time_selection_split": dict(times)}


class ShardedSelector:
    """Any ``Selector`` (``inner``) for the ranks of ``world``, behind the same ``select``: each rank passes the
    selection gradients of its rows ``rows(n)`` and all n labels, and every rank gets the same ``Selection`` over
    positions 0..n-1, its ``record`` the round's distributed fields (mode, bytes, seconds, ``grad_error``).

    ``mode``: gather or partition (module docstring); ``second_round``: partition's weighted second round (needs a
    ``weighted`` selector, not batch-wise). A selector without gradients runs on every rank over all labels with
    the run's generator (the same draw everywhere, nothing moves); a gradient selector's owners draw from a
    generator seeded ``solver_seed(round_index)`` (partition: plus the rank), never from the run's generator,
    which must stay in step on every rank. A world of one is the wrapped selector itself."""

    per_round = True
    """``select`` takes the ``round_index`` of the schedule (for ``solver_seed``, and a ``per_round`` selector)."""

    def __init__(self, inner: Selector, world: World, mode: str = "gather", *, second_round: bool = False,
                 solver_seed: Callable[[int], int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"selection.distributed must be one of {MODES}, got {mode!r}")
        if mode == "partition" and second_round and inner.needs_grads:
            if not getattr(inner, "weighted", False):
                raise ValueError(f"selection.method={inner.name!r}: the partition second round needs a selector "
                                 "that takes point weights (craig, gradmatch)")
            if getattr(inner, "batchwise", False):
                raise ValueError("the partition second round chooses single examples; set selection.batchwise="
                                 "false or drop the second round")
        self.inner, self.world, self.mode, self.second_round = inner, world, mode, second_round
        self.solver_seed = solver_seed or (lambda r: r)
        self.name, self.needs_grads, self.subset = inner.name, inner.needs_grads, inner.subset
        self.weight_rule = inner.weight_rule
        self.batchwise = bool(getattr(inner, "batchwise", False))

    @property
    def fraction(self) -> float:
        """The wrapped selector's share of every class (read-only: a copy with another share would not reach
        ``inner``)."""
        return fraction_of(self.inner)

    def rows(self, n: int) -> tuple[int, int]:
        """[start, stop) of the n examples whose selection gradients this rank computes."""
        return shard_range(n, self.world.rank, self.world.world_size)

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator,
               progress: Task | None = None, round_index: int = 0) -> Selection:
        """grads: (stop - start, d) this rank's rows ``rows(n)`` (None for a selector without gradients); labels:
        (n,) every example's class, the same on every rank -> the Selection over 0..n-1, on ``labels``' device.
        Collective: every rank calls it. ``progress``: a task this rank's per-class solvers advance."""
        if not self.inner.needs_grads:
            sel = select_round(self.inner, None, labels, generator, round_index=round_index)
            sel.record = _record(self.mode, 0, 0, {"solver": 0.0}, None)
            return sel
        if grads is None:
            raise ValueError(f"selection.method={self.name!r} needs this rank's gradient rows, got None")
        lo, hi = self.rows(labels.numel())
        if grads.shape[0] != hi - lo:
            raise ValueError(f"this rank's gradients must be its rows [{lo}, {hi}) of the {labels.numel()} examples, "
                             f"got {grads.shape[0]} rows")
        shard = GradShard(grads, labels[lo:hi], torch.arange(lo, hi, device=labels.device))
        sel = self.select_shard(shard, labels, generator, progress, round_index)
        dev = labels.device
        return Selection(sel.indices.to(dev), sel.weights.to(dev), sel.stats, sel.record)

    def select_shard(self, shard: GradShard, labels: Tensor, generator: torch.Generator,
                     progress: Task | None = None, round_index: int = 0) -> Selection:
        """``select`` of a shard whose rows are any global positions (``shard.indices``, disjoint across ranks)."""
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        if self.world.world_size == 1 or not dist.is_initialized() or dist.get_world_size() == 1:
            return self._one_process(_sorted(shard), generator, progress)
        _check_shard(shard, num_classes)
        seed = self.solver_seed(round_index)
        if self.mode == "gather":
            return self._gather(shard, num_classes, seed, progress)
        return self._partition(shard, num_classes, seed, progress)

    def _one_process(self, shard: GradShard, generator: torch.Generator, progress: Task | None) -> Selection:
        """A world of one: the wrapped selector on the whole (sorted) shard with the run's generator, exactly the
        single-process selection; nothing moves."""
        t0 = time.perf_counter()
        sel = self.inner.select(shard.grads, shard.labels, generator, progress=progress)
        solver_s = time.perf_counter() - t0
        err = approximation_error(shard.grads, sel.indices.to(shard.grads.device), sel.weights.to(shard.grads.device))
        return Selection(shard.indices[sel.indices.to(shard.indices.device)], sel.weights, sel.stats,
                         _record(self.mode, 0, 0, {"communication": 0.0, "solver": solver_s}, err))

    def _gather(self, shard: GradShard, num_classes: int, seed: int, progress: Task | None) -> Selection:
        """``gather`` mode: every class's rows to its owner, the wrapped selector there."""
        comm = _Comm(shard.grads.device if dist.get_backend() == "nccl" else torch.device("cpu"))
        shard = _sorted(shard)
        sizes = comm.all_reduce(torch.bincount(shard.labels, minlength=num_classes).to(comm.device))
        owned, _ = _send_to_owners(comm, shard, class_owners(sizes.cpu(), comm.world))
        t0 = time.perf_counter()
        picks, weights, stats = owned.indices[:0], torch.empty(0), {"method": self.name}
        if owned.labels.numel():
            sel = self.inner.select(owned.grads, owned.labels, torch.Generator().manual_seed(seed), progress=progress)
            picks, weights, stats = owned.indices[sel.indices.to(owned.indices.device)], sel.weights, sel.stats
        solver_s = time.perf_counter() - t0
        return _finish(comm, "gather", shard, _share(comm, picks, weights), solver_s, stats)

    def _partition(self, shard: GradShard, num_classes: int, seed: int, progress: Task | None) -> Selection:
        """``partition`` mode: the wrapped selector on this rank's rows; with ``second_round``, on a whole class
        budget first (fraction x world), then at the class owners on the proposals, weighted."""
        comm = _Comm(shard.grads.device if dist.get_backend() == "nccl" else torch.device("cpu"))
        shard = _sorted(shard)
        first = self.inner
        if self.second_round:
            first = copy.copy(self.inner)
            first.fraction = min(1.0, self.fraction * comm.world)  # type: ignore[attr-defined]
        gen = torch.Generator().manual_seed(seed + comm.rank)
        t0 = time.perf_counter()
        sel = first.select(shard.grads, shard.labels, gen, progress=progress)
        solver_s = time.perf_counter() - t0
        local = sel.indices.to(shard.indices.device)
        if not self.second_round:
            return _finish(comm, "partition", shard, _share(comm, shard.indices[local], sel.weights), solver_s,
                           sel.stats)
        sizes = comm.all_reduce(torch.bincount(shard.labels, minlength=num_classes).to(comm.device))
        cand = GradShard(shard.grads[local], shard.labels[local], shard.indices[local])
        owned, w1 = _send_to_owners(comm, cand, class_owners(sizes.cpu(), comm.world),
                                    sel.weights.to(shard.grads.device, torch.float32))
        assert w1 is not None
        t0 = time.perf_counter()
        picks, weights = owned.indices[:0], torch.empty(0)
        if owned.labels.numel():  # each owned class: ceil(fraction * n_c) of the proposals, standing for the class
            kept = self.inner.select(owned.grads, owned.labels, gen, point_weights=w1,  # type: ignore[call-arg]
                                     class_sizes=sizes.cpu())
            picks, weights = owned.indices[kept.indices.to(owned.indices.device)], kept.weights.float().cpu()
        solver_s += time.perf_counter() - t0
        return _finish(comm, "partition", shard, _share(comm, picks, weights), solver_s,
                       {"method": self.name, "second_round": True})
