"""The evaluation a run reports per epoch and at the end: clean and PGD accuracy on the test subset,
robust validation accuracy (per epoch, when a split exists), AutoAttack and the objective's own threats."""

from __future__ import annotations

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


@dataclass
class HeldOut:
    """Validation images of a caller's Dataset, held in memory: (N, C, H, W) uint8 or float in [0, 1] and
    (N,) int64 labels (the built-in data's are ``ImageArrays``)."""

    images: Tensor
    labels: Tensor


def evaluate_model(model: nn.Module, objective: Objective, cfg: Config, test: tuple[Tensor, Tensor],
                   val: ImageArrays | HeldOut | None, device: torch.device, final: bool = False,
                   progress: Reporter | None = None) -> dict[str, Any]:
    """``test_*`` metrics (and ``val_pgd{k}_acc`` per epoch). ``final``: PGD with eval.pgd_steps and
    restarts, AutoAttack if asked, and the objective's ``extra_evaluation`` (PAT: PPGD and LPA).
    ``progress``: a reporter (``advcoreset.progress``) for each attack of the final evaluation."""
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
