"""The evaluation a run reports per epoch and at the end: clean and PGD accuracy on the test subset,
robust validation accuracy (per epoch, when a split exists), AutoAttack and the objective's own threats; in a
world > 1 split over the ranks, the correct counts summed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config
from advcoreset.data import ImageArrays
from advcoreset.evaluation import evaluate, pgd_accuracy
from advcoreset.evaluation.autoattack import AutoAttackBudgets
from advcoreset.evaluation.run import eval_alpha
from advcoreset.objectives import Objective
from advcoreset.progress import Reporter
from advcoreset.world import World, reduce_accuracies, shard_range, sum_counts


@dataclass
class HeldOut:
    """Validation images of a caller's Dataset, held in memory: (N, C, H, W) uint8 or float in [0, 1] and
    (N,) int64 labels (the built-in data's are ``ImageArrays``)."""

    images: Tensor
    labels: Tensor


def evaluate_model(model: nn.Module, objective: Objective, cfg: Config, test: tuple[Tensor, Tensor],
                   val: ImageArrays | HeldOut | None, device: torch.device, final: bool = False,
                   progress: Reporter | None = None, world: World | None = None) -> dict[str, Any]:
    """``test_*`` metrics (and ``val_pgd{k}_acc`` per epoch). ``final``: PGD with eval.pgd_steps and
    restarts, AutoAttack if asked, and the objective's ``extra_evaluation`` (PAT: PPGD and LPA).
    ``progress``: a reporter (``advcoreset.progress``) for each attack of the final evaluation. ``world``: in a
    world > 1 every rank evaluates its share of each set and gets the whole sets' metrics (``evaluate_split``)."""
    if world is not None and world.is_distributed:
        return evaluate_split(model, objective, cfg, test, val, world, final)
    e, a = cfg.eval, cfg.objective.attack
    images, labels = test
    steps = e.pgd_steps if final else e.val_pgd_steps
    # eval.pgd_alpha as configured: None lets evaluate() apply the default rule and record it
    res = evaluate(model, images, labels, norm=a.norm, eps=a.eps, pgd_steps=steps, pgd_alpha=cfg.eval.pgd_alpha,
                   pgd_restarts=e.pgd_restarts if final else 1, autoattack=final and e.autoattack,
                   aa_n=e.autoattack_n, aa_version=e.autoattack_version, batch_size=e.batch_size,
                   aa_budgets=None if e.autoattack_targets == 9 else AutoAttackBudgets(
                       target_classes=e.autoattack_targets),
                   device=device, progress=progress if final else None)
    out: dict[str, Any] = {f"test_{k}": v for k, v in res.items()}
    if final:
        extra = objective.extra_evaluation(model, images, labels, batch_size=e.batch_size)
        out.update({f"test_{k}": v for k, v in extra.items()})
    if val is not None and not final:
        out[f"val_pgd{e.val_pgd_steps}_acc"] = pgd_accuracy(
            model, val.images, val.labels, eps=a.eps, steps=e.val_pgd_steps, norm=a.norm,
            alpha=eval_alpha(cfg, e.val_pgd_steps),
            batch_size=e.batch_size, device=device)
    return out


def _rank_rows(n: int, first: int, world: World) -> Tensor:
    """This rank's rows of an evaluation set of ``n``: its share of the first ``first`` rows (the
    AutoAttack subset), then its share of the rest, so the ranks together cover both exactly once."""
    a0, a1 = shard_range(first, world.rank, world.world_size)
    b0, b1 = shard_range(n - first, world.rank, world.world_size)
    return torch.cat([torch.arange(a0, a1), torch.arange(first + b0, first + b1)])


def evaluate_split(model: nn.Module, objective: Objective, cfg: Config, test: tuple[Tensor, Tensor],
                   val: ImageArrays | HeldOut | None, world: World, final: bool = False) -> dict[str, Any]:
    """``evaluate_model`` with the test (and validation) set split over the ranks and the correct counts
    summed: every ``*_acc`` is the whole set's; ``test_n`` counts every rank's examples. The same on every
    rank (a collective). AutoAttack runs on the first ``eval.autoattack_n`` test examples, split too."""
    images, labels = test
    n = labels.shape[0]
    aa = final and cfg.eval.autoattack
    first = min(cfg.eval.autoattack_n, n) if aa and cfg.eval.autoattack_n is not None else (n if aa else 0)
    rows = _rank_rows(n, first, world)
    a0, a1 = shard_range(first, world.rank, world.world_size)
    local_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, autoattack_n=a1 - a0)) if aa else cfg
    v0, v1 = shard_range(0 if val is None else val.labels.shape[0], world.rank, world.world_size)
    vshard = None if val is None else dataclasses.replace(val, images=val.images[v0:v1], labels=val.labels[v0:v1])
    res = evaluate_model(model, objective, local_cfg, (images[rows], labels[rows]), vshard, world.device, final)
    accs = {k: v for k, v in res.items() if k.endswith("_acc") and isinstance(v, float)}
    counts = {k: a1 - a0 if k == "test_autoattack_acc" else v1 - v0 if k.startswith("val_") else rows.numel()
              for k in accs}
    for k in accs:  # keys differ in their example counts: reduce one at a time (few keys, once per epoch)
        res[k] = reduce_accuracies({k: accs[k]}, counts[k], world)[k]
    if "test_n" in res:
        dev = world.device if world.backend == "nccl" else "cpu"
        res["test_n"] = int(sum_counts(torch.tensor([float(res["test_n"])], device=dev), world)[0])
    return res
