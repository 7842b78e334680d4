"""Standard, PGD-AT (l_inf / l_2), TRADES, Fast-AT (FGSM-RS) and N-FGSM objectives."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advcoreset.attacks import fgsm_rs, nfgsm, pgd, trades_kl
from advcoreset.objectives.base import Objective, eval_mode


class Standard(Objective):
    """Clean cross-entropy (no attack)."""

    name = "standard"


class PGDAT(Objective):
    """Madry et al. PGD adversarial training: CE at the PGD point (l_inf or l_2)."""

    name = "pgd"

    def __init__(self, eps: float, alpha: float, steps: int, norm: str = "linf", random_start: bool = True):
        super().__init__()
        self.eps, self.alpha, self.steps, self.norm, self.random_start = eps, alpha, steps, norm, random_start

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with eval_mode(model):
            return pgd(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                       random_start=self.random_start)


class FastAT(Objective):
    """Wong, Rice, Kolter 2020 "Fast is better than free": CE at the FGSM-from-random-start point,
    step ``alpha`` (default 1.25 eps)."""

    name = "fast"

    def __init__(self, eps: float, alpha: float | None = None, norm: str = "linf"):
        super().__init__()
        self.eps, self.alpha, self.norm = eps, (1.25 * eps if alpha is None else alpha), norm

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with eval_mode(model):
            return fgsm_rs(model, x, y, eps=self.eps, alpha=self.alpha, norm=self.norm)


class NFGSM(Objective):
    """de Jorge et al. 2022 "Make some noise": CE at the N-FGSM point (noise U[-2 eps, 2 eps], one signed
    step of eps, no projection back to the eps-ball), l_inf; a single-step method that does not overfit
    catastrophically where Fast-AT can."""

    name = "nfgsm"

    def __init__(self, eps: float, noise: float | None = None, alpha: float | None = None):
        super().__init__()
        self.eps = eps
        self.noise = 2 * eps if noise is None else noise
        self.alpha = eps if alpha is None else alpha

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with eval_mode(model):
            return nfgsm(model, x, y, eps=self.eps, noise=self.noise, alpha=self.alpha)


class TRADES(Objective):
    """Zhang et al. 2019: CE(f(x), y) + beta * KL(p(x) || p(x')), x' from the KL attack (eval mode);
    beta is applied once. The loss is computed with the model in the caller's (training) mode."""

    name = "trades"

    def __init__(self, eps: float, alpha: float, steps: int, norm: str = "linf", beta: float = 6.0):
        super().__init__()
        self.eps, self.alpha, self.steps, self.norm, self.beta = eps, alpha, steps, norm, beta

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with eval_mode(model):
            return trades_kl(model, x, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm)

    def points(self, x: Tensor, x_adv: Tensor) -> list[Tensor]:
        return [x, x_adv]

    def loss_from_logits(self, logits: list[Tensor], y: Tensor) -> Tensor:
        clean, adv = logits
        kl = (F.softmax(clean, 1) * (F.log_softmax(clean, 1) - F.log_softmax(adv, 1))).sum(1)
        return F.cross_entropy(clean, y, reduction="none") + self.beta * kl

