"""Clean and PGD accuracy, and the one ``evaluate`` call that reports them (plus AutoAttack on request).

Images are (N, C, H, W), either uint8 in [0, 255] (converted to float / 255 per batch on the device) or
float in [0, 1]; labels are (N,) int64. eps and step sizes are in [0, 1] pixel units. Every function runs
the model in eval mode and restores the caller's mode; none touches the parameters' gradients.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from advcoreset.attacks import pgd
from advcoreset.evaluation.common import check_perturbation, model_device, to_unit
from advcoreset.objectives.base import eval_mode
from advcoreset.progress import Reporter, reporter_or_silent

if TYPE_CHECKING:
    from advcoreset.evaluation.autoattack import AutoAttackBudgets

_NORMS = ("linf", "l2")
__all__ = ["accuracy", "check_perturbation", "default_pgd_alpha", "evaluate", "model_device", "pgd_accuracy",
           "pgd_robust_mask", "to_unit"]


def _check_inputs(images: Tensor, labels: Tensor, batch_size: int) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be (N,) = ({images.shape[0]},), got shape {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty set of images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


ALPHA_RULE = "2.5 eps / steps"


def default_pgd_alpha(eps: float, norm: str, steps: int) -> float:
    """The evaluation PGD step when none is given: 2.5 eps / steps, for either norm (Madry et al.'s rule, as
    the selection attack uses), so a short attack can still cross the ball (a fixed eps / 10 let PGD-5 travel
    only half of it and overstated robustness)."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return 2.5 * eps / max(int(steps), 1)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 500,
             device: torch.device | str | None = None, progress: Reporter | None = None) -> float:
    """Clean top-1 accuracy in [0, 1].

    images: (N, C, H, W) uint8 or float in [0, 1]; labels: (N,). Eval mode, no gradients. ``progress``:
    a reporter (``advcoreset.progress``), None for silence."""
    _check_inputs(images, labels, batch_size)
    dev = model_device(model, device)
    correct = 0
    with eval_mode(model), reporter_or_silent(progress)("clean accuracy", images.shape[0]) as task:
        for xb, yb in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            correct += int((_predict(model, to_unit(xb, dev)) == yb.to(dev)).sum())
            task.update(xb.shape[0])
    return correct / images.shape[0]


def pgd_robust_mask(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float, alpha: float,
                    steps: int, norm: str = "linf", restarts: int = 1, batch_size: int = 500,
                    device: torch.device | str | None = None, progress: Reporter | None = None) -> Tensor:
    """(N,) bool on the CPU: True where the example is classified correctly clean and under every restart.

    Each restart runs ``advcoreset.attacks.pgd`` (random start, early stop) only on the examples still
    robust, so an example counts as robust only if no restart fooled it, and no work is spent on examples
    already lost. Adversarial examples are checked to lie in the eps-ball and in [0, 1]. ``progress``: a
    reporter (``advcoreset.progress``) told the images done and the robust count so far; None: silent.
    """
    _check_inputs(images, labels, batch_size)
    if norm not in _NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0 or restarts < 1:
        raise ValueError(f"need eps >= 0, steps >= 0, restarts >= 1; got {eps}, {steps}, {restarts}")
    dev = model_device(model, device)
    robust = torch.zeros(images.shape[0], dtype=torch.bool)
    desc = f"PGD-{steps}" + (f" x{restarts} restarts" if restarts > 1 else "") + f" ({norm}, eps {eps:g})"
    task = reporter_or_silent(progress)(desc, images.shape[0])
    with eval_mode(model), torch.enable_grad(), task:
        for start in range(0, images.shape[0], batch_size):
            x = to_unit(images[start:start + batch_size], dev)
            y = labels[start:start + batch_size].to(dev)
            ok = _predict(model, x) == y
            for _ in range(restarts if eps > 0 and steps > 0 else 0):
                idx = ok.nonzero().flatten()
                if idx.numel() == 0:
                    break
                x_adv = pgd(model, x[idx], y[idx], eps=eps, alpha=alpha, steps=steps, norm=norm,
                            random_start=True, restarts=1, early_stop=True)
                check_perturbation(x_adv, x[idx], eps=eps, norm=norm, attack="PGD")
                ok[idx] = _predict(model, x_adv) == y[idx]
            robust[start:start + batch_size] = ok.cpu()
            task.update(x.shape[0], note=f"robust {int(robust[:start + x.shape[0]].sum())}/{start + x.shape[0]}")
    return robust


def pgd_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float, alpha: float, steps: int,
                 norm: str = "linf", restarts: int = 1, batch_size: int = 500,
                 device: torch.device | str | None = None, progress: Reporter | None = None) -> float:
    """Robust accuracy in [0, 1] under PGD-``steps`` with ``restarts`` random restarts (an example is
    robust only if correct under all of them). See ``pgd_robust_mask`` for the arguments."""
    mask = pgd_robust_mask(model, images, labels, eps=eps, alpha=alpha, steps=steps, norm=norm,
                           restarts=restarts, batch_size=batch_size, device=device, progress=progress)
    return float(mask.float().mean())


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, norm: str, eps: float, pgd_steps: int,
             pgd_alpha: float | None, pgd_restarts: int = 1, autoattack: bool = False,
             aa_n: int | None = None, aa_version: str = "standard", aa_seed: int = 0,
             aa_budgets: AutoAttackBudgets | None = None, batch_size: int = 500,
             device: torch.device | str | None = None, progress: Reporter | None = None) -> dict[str, Any]:
    """Clean accuracy, PGD accuracy and (optionally) AutoAttack accuracy, as a JSON-serialisable dict.

    Args:
        images: (N, C, H, W) uint8 or float in [0, 1]; labels: (N,).
        norm: "linf" or "l2"; eps: radius in [0, 1] pixel units.
        pgd_alpha: PGD step; None -> ``default_pgd_alpha`` (2.5 eps / pgd_steps).
        autoattack: also run AutoAttack (``advcoreset.evaluation.autoattack``) on the first ``aa_n``
            examples (all if None); ``aa_version`` "standard" (RobustBench budgets) or "fast";
            ``aa_budgets`` overrides the budgets (tests only: the result then says they are not standard).
        progress: a reporter (``advcoreset.progress.make_progress``) for each attack; None: silent.

    Returns:
        {"n", "norm", "eps", "clean_acc", f"pgd{pgd_steps}_acc", "pgd": {steps, alpha, restarts},
        "seconds": {"clean", "pgd"[, "autoattack"]}} and, with AutoAttack, the keys of
        ``autoattack_accuracy``'s result ("autoattack_acc", "autoattack").
    """
    alpha = default_pgd_alpha(eps, norm, pgd_steps) if pgd_alpha is None else float(pgd_alpha)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "n": int(images.shape[0]),
        "norm": norm,
        "eps": float(eps),
        "clean_acc": accuracy(model, images, labels, batch_size=batch_size, device=device, progress=progress),
    }
    t1 = time.perf_counter()
    out[f"pgd{pgd_steps}_acc"] = pgd_accuracy(model, images, labels, eps=eps, alpha=alpha, steps=pgd_steps,
                                              norm=norm, restarts=pgd_restarts, batch_size=batch_size,
                                              device=device, progress=progress)
    out["pgd"] = {"steps": int(pgd_steps), "alpha": alpha, "restarts": int(pgd_restarts),
                  "alpha_rule": ALPHA_RULE if pgd_alpha is None else "given", "random_start": True, "loss": "ce"}
    out["seconds"] = {"clean": t1 - t0, "pgd": time.perf_counter() - t1}
    if autoattack:
        from advcoreset.evaluation.autoattack import autoattack_accuracy

        t2 = time.perf_counter()
        n = images.shape[0] if aa_n is None else min(int(aa_n), images.shape[0])
        out.update(autoattack_accuracy(model, images[:n], labels[:n], norm=norm, eps=eps, version=aa_version,
                                       budgets=aa_budgets, seed=aa_seed, batch_size=batch_size,
                                       device=device, progress=progress))
        out["seconds"]["autoattack"] = time.perf_counter() - t2
    return out
