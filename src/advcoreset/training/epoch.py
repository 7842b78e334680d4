"""One training epoch over weighted batches (an optimiser step every ``optim.accumulate`` of them), with
per-section timing that syncs the device once per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from advcoreset.config import OptimConfig
from advcoreset.data.loader import Batch
from advcoreset.objectives import Objective
from advcoreset.objectives.base import ObjectiveOutput
from advcoreset.progress import Task
from advcoreset.training.schedule import lr_at


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible resume); the message says what to do."""


class StepTimer:
    """Accumulates the time of named sections without a device sync per step (CUDA events are read once
    per epoch)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: dict[str, list[tuple[Any, Any]]] = {}
        self.seconds: dict[str, float] = {}

    def section(self, name: str) -> _Section:
        return _Section(self, name)

    def totals(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            for name, pairs in self.events.items():
                self.seconds[name] = self.seconds.get(name, 0.0) + sum(a.elapsed_time(b) for a, b in pairs) / 1e3
            self.events.clear()
        return dict(self.seconds)


class _Section:
    def __init__(self, timer: StepTimer, name: str) -> None:
        self.t, self.name = timer, name

    def __enter__(self) -> None:
        if self.t.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.t.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.t.events.setdefault(self.name, []).append((self.start, end))
        else:
            self.t.seconds[self.name] = self.t.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0


@dataclass
class EpochContext:
    """What one epoch needs besides the batches: the parts and where the run stands."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    optim: OptimConfig
    device: torch.device
    epoch: int
    """Epochs completed before this one (the LR schedule's position)."""
    autocast: Callable[[], AbstractContextManager[Any]]
    checkpoint: str
    """The last good checkpoint, named in the error when the loss stops being finite."""
    ddp: nn.Module | None = None
    """Under torchrun: the DistributedDataParallel wrapper of ``model`` the loss runs through (attacks use
    ``model`` itself: their input-gradient passes must not enter DDP's gradient reduction)."""
    reduce: Callable[[Tensor], Tensor] | None = None
    """Under torchrun: sum of a float64 vector over the ranks, so every rank judges the loss alike."""
    base_lrs: list[float] | None = None
    """An optimiser of the caller's: each parameter group's own rate, which the schedule's shape scales
    (None: the library's optimiser, whose groups all take ``lr_at`` itself)."""
    scheduler: Any = None
    """The caller's LR scheduler, stepped after every optimiser step (the loop then sets no rate)."""
    remember: Callable[[Batch, Tensor], None] | None = None
    """Told every mini-batch's adversarial points (B, C, H, W) after its attack (the coreset loader's
    perturbation cache, ``selection.points: cached``)."""
    rest: Objective | None = None
    """The attack of the examples a batch marks as outside the coreset (``Batch.strong`` False): the coreset
    loader's ``rest_objective`` (``selection.rest``); None: every example takes ``objective``'s attack."""


Micro = tuple[Batch, Tensor | float | None, bool]
"""A fetched mini-batch, its loss normaliser (None: its weight sum) and whether it counts in the statistics."""


def _step_norm(micro: list[Micro]) -> Tensor | float | None:
    """The normaliser of an optimiser step over ``micro``: one mini-batch keeps its own (None: its weight sum);
    accumulated ones share the sum of theirs, so the step's loss is sum_j w_j l_j over all of them divided by
    their total weight (batch rule), exactly one batch of them all."""
    if len(micro) == 1:
        return micro[0][1]
    total: Tensor | float = 0.0
    for b, n, _ in micro:
        total = total + (b.w.sum() if n is None else n)
    return total


def _attack(ctx: EpochContext, b: Batch) -> Tensor:
    """The batch's adversarial points (B, C, H, W): the objective's attack, or, for a batch that marks its
    coreset members (``b.strong``), the objective's attack on them and ``ctx.rest``'s on the others."""
    if b.strong is None or ctx.rest is None:
        return ctx.objective.attack(ctx.model, b.x, b.y)
    strong = b.strong.cpu()  # the split is made on the host and applied by index: no device sync
    x_adv = b.x.clone()
    for rows, obj in ((strong, ctx.objective), (~strong, ctx.rest)):
        at = rows.nonzero().flatten()
        if at.numel():
            at = at.to(b.x.device, non_blocking=True)
            part = obj.attack(ctx.model, b.x.index_select(0, at), b.y.index_select(0, at))
            x_adv.index_copy_(0, at, part.to(x_adv.dtype))
    return x_adv


def _step(ctx: EpochContext, micro: list[Micro], timer: StepTimer) -> list[ObjectiveOutput]:
    """One optimiser step over the mini-batches ``micro`` (gradients accumulated); their objective outputs."""
    model, opt = ctx.model, ctx.optimizer
    norm, outs = _step_norm(micro), []
    for k, (b, _, _) in enumerate(micro):
        with timer.section("attack"), ctx.autocast():
            x_adv = _attack(ctx, b)
            if ctx.remember is not None:
                ctx.remember(b, x_adv)
        with timer.section("update"):
            last = k == len(micro) - 1
            # DDP reduces gradients once per step: at the last mini-batch's backward
            sync = cast(DDP, ctx.ddp).no_sync() if ctx.ddp is not None and not last else nullcontext()
            with sync:
                with ctx.autocast():
                    out = ctx.objective.loss_at(ctx.ddp or model, b.x, x_adv, b.y, b.w, norm=norm)
                if k == 0:
                    opt.zero_grad(set_to_none=True)
                out.loss.backward()
            outs.append(out)
    with timer.section("update"):
        if ctx.optim.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), ctx.optim.grad_clip)
        opt.step()
    return outs


def _set_lr(ctx: EpochContext, progress: float) -> float:
    """Set the optimiser's rates for training progress ``progress``; returns the first group's rate."""
    groups = ctx.optimizer.param_groups
    if ctx.scheduler is None and ctx.optim.schedule != "none":
        lr = lr_at(progress, ctx.optim)
        if ctx.base_lrs is None:
            for g in groups:
                g["lr"] = lr
        else:
            for g, base in zip(groups, ctx.base_lrs, strict=True):
                g["lr"] = base * lr / ctx.optim.lr
    return float(groups[0]["lr"])


def _totals(ctx: EpochContext, loss_sum: Tensor, correct: Tensor, seen: int) -> tuple[float, float, int]:
    """(loss sum, correct, seen) of the epoch so far, over all ranks under torchrun."""
    if ctx.reduce is None:
        return float(loss_sum), float(correct), seen
    t = ctx.reduce(torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                                                   device=loss_sum.device)]))
    return float(t[0]), float(t[1]), int(t[2])


def _check_and_note(ctx: EpochContext, i: int, n_batches: int, loss_sum: Tensor, correct: Tensor, seen: int,
                    lr: float) -> str:
    """After mini-batch ``i`` (1-based): every 50 and at the end (the loop's only host syncs) the running loss,
    adversarial accuracy and LR as a progress note, after checking that the loss is finite; else ""."""
    if i % 50 and i != n_batches:
        return ""
    tot_loss, tot_correct, tot_seen = _totals(ctx, loss_sum, correct, seen)
    avg = tot_loss / max(tot_seen, 1)
    if not math.isfinite(avg):
        raise TrainingError(
            f"the training loss became {avg} in epoch {ctx.epoch + 1} (batch {i}); the last good "
            f"checkpoint {ctx.checkpoint} (epoch {ctx.epoch}) is untouched. Lower optim.lr, or check "
            "the data for NaN/inf pixels.")
    return f"loss {avg:.3f}, adv-acc {tot_correct / max(tot_seen, 1):.3f}, lr {lr:.3g}"


def train_epoch(ctx: EpochContext, batches: Iterator[Batch], n_batches: int,
                loss_norm: Callable[[Batch], Tensor | float | None], progress: Task | None = None) -> dict[str, float]:
    """One pass over ``batches`` (``n_batches`` of them), an optimiser step every ``optim.accumulate`` of them;
    ``loss_norm(batch)`` is the weighted loss's normaliser (None: the batch's weight sum; a step over several
    sums theirs); a rank's weight-0 stand-in (``Batch.counted`` False) is left out of the epoch's statistics;
    ``progress`` is told of every batch (with the running loss,
    accuracy and LR every 50). Returns the epoch's loss, adversarial accuracy, examples seen (all ranks),
    last LR and ``time_*`` seconds (data, attack, update, epoch_wall)."""
    ctx.model.train()
    timer = StepTimer(ctx.device)
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device)
    seen, lr = 0, 0.0
    t_start = time.perf_counter()
    acc = ctx.optim.accumulate
    n_steps = -(-n_batches // acc)  # = ceil(k / (acc x batch)): the steps of one batch of them all
    i = 0
    while i < n_batches:
        micro: list[Micro] = []
        with timer.section("data"):
            for _ in range(min(acc, n_batches - i)):
                b = next(batches)
                micro.append((b, loss_norm(b), b.counted))
        # the schedule moves per optimiser step, as it would for one batch of accumulate x batch_size
        lr = _set_lr(ctx, (ctx.epoch + (i // acc) / n_steps) / ctx.optim.epochs)
        outs = _step(ctx, micro, timer)
        if ctx.scheduler is not None:
            ctx.scheduler.step()
        for (b, _, counts), out in zip(micro, outs, strict=True):
            if counts:
                loss_sum += out.per_example.float().sum()
                correct += (out.logits.argmax(1) == b.y).sum()
                seen += b.y.numel()
            i += 1
            note = _check_and_note(ctx, i, n_batches, loss_sum, correct, seen, lr)
            if progress is not None:
                progress.update(1, note=note)
    times = timer.totals()
    times["epoch_wall"] = time.perf_counter() - t_start
    tot_loss, tot_correct, tot_seen = _totals(ctx, loss_sum, correct, seen)
    return {"train_loss": tot_loss / max(tot_seen, 1), "train_adv_acc": tot_correct / max(tot_seen, 1),
            "n_train": tot_seen, "lr": lr, **{f"time_{k}": v for k, v in times.items()}}
