"""Perceptual Adversarial Training (Laidlaw, Singla, Feizi, ICLR 2021) as an ``Objective``.

Loss: cross-entropy at the Fast-LPA point x~ (``advcoreset.attacks.perceptual.fast_lpa``), crafted with
the model in eval mode (BatchNorm frozen; the caller's mode is restored). The LPIPS distance is the
model's own (self-bound, ``SelfLPIPS``), rebuilt from whatever model is passed at each call, or a
frozen AlexNet read from a local weights file when ``cfg.pat.lpips`` is a path.

The interface is the base class's (``points`` = [x_adv], CE loss), so coreset selection's closed-form
last-layer gradients (``advcoreset.selection.gradients.last_layer_grads``) work with no special case:
they are the CE gradients at the perceptual adversarial points, as ACS prescribes for PAT.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from advcoreset.attacks.lpips import LPIPS, SelfLPIPS, alexnet_lpips
from advcoreset.attacks.perceptual import fast_lpa, perceptual_accuracy
from advcoreset.config import ObjectiveConfig
from advcoreset.objectives.base import Objective, eval_mode


class PAT(Objective):
    """CE at the Fast-LPA adversarial point.

    Args:
        bound: LPIPS radius (soft in training, as in the paper).
        steps: Fast-LPA iterations.
        lpips: a fixed LPIPS module (e.g. ``alexnet_lpips(path)``), or None for the self-bound LPIPS of
            the model being trained.
        lambda_init, lambda_growth: the Lagrange multiplier grows geometrically from lambda_init towards
            lambda_init * lambda_growth over the steps.
    """

    name = "pat"

    def __init__(self, bound: float, steps: int, lpips: LPIPS | None = None, lambda_init: float = 1.0,
                 lambda_growth: float = 10.0, lpips_name: str | None = None) -> None:
        super().__init__()
        if not bound > 0:
            raise ValueError(f"PAT bound must be > 0, got {bound}")
        if steps < 0:
            raise ValueError(f"PAT steps must be >= 0, got {steps}")
        self.bound, self.steps = bound, steps
        self.lambda_init, self.lambda_growth = lambda_init, lambda_growth
        self.lpips = lpips
        self.lpips_name = lpips_name or ("self-bound" if lpips is None else "fixed")

    def distance_for(self, model: nn.Module) -> LPIPS:
        """The LPIPS used to attack ``model``: the fixed one (moved to the model's device) or self-bound."""
        if self.lpips is None:
            return SelfLPIPS(model)
        device = next(model.parameters()).device
        if next(self.lpips.parameters(), None) is not None and next(self.lpips.parameters()).device != device:
            self.lpips.to(device)
        return self.lpips

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """x: (B, C, H, W) in [0, 1], y: (B,) -> Fast-LPA point (B, C, H, W) in [0, 1], detached."""
        with eval_mode(model):
            return fast_lpa(model, x, y, self.distance_for(model), bound=self.bound, steps=self.steps,
                            lambda_init=self.lambda_init, lambda_growth=self.lambda_growth)


    def extra_evaluation(self, model: nn.Module, images: Tensor, labels: Tensor, *,
                         batch_size: int = 500) -> dict[str, Any]:
        """PAT's own threat model beside l_p: PPGD and LPA accuracy at the training bound, with at least 10
        steps and the training LPIPS (an AlexNet file is read once per run)."""
        res: dict[str, Any] = {}
        for attack in ("ppgd", "lpa"):
            res[f"{attack}_acc"] = perceptual_accuracy(model, images, labels, attack=attack, bound=self.bound,
                                                       steps=max(self.steps, 10), lpips=self.lpips,
                                                       batch_size=batch_size)
        res["perceptual_bound"] = self.bound
        res["perceptual_lpips"] = self.lpips_name
        return res


def threat_model(cfg: ObjectiveConfig) -> dict[str, Any]:
    """PAT's perceptual threat beside the l_p one: the LPIPS bound and distance it trains against."""
    return {"perceptual_bound": cfg.pat.bound, "lpips": cfg.pat.lpips}


def build(cfg: ObjectiveConfig, steps: int | None = None) -> PAT:
    """PAT from ``cfg.pat``; ``steps`` overrides ``cfg.pat.steps`` (e.g. a cheaper selection attack).
    ``cfg.pat.lpips`` is "self" or a path to local AlexNet weights (see ``alexnet_lpips``)."""
    p = cfg.pat
    lpips = None if p.lpips == "self" else alexnet_lpips(p.lpips)
    name = "self-bound" if lpips is None else f"alexnet:{p.lpips}"
    return PAT(p.bound, p.steps if steps is None else steps, lpips, p.lambda_init, p.lambda_growth, name)
