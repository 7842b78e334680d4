"""Attacks: pure functions of (model, x, y, budget) returning x_adv in the budget and in [0, 1]."""

from advcoreset.attacks.lp import fgsm_rs, kl_loss, nfgsm, pgd, project, random_init, trades_kl

__all__ = ["fgsm_rs", "kl_loss", "nfgsm", "pgd", "project", "random_init", "trades_kl"]
