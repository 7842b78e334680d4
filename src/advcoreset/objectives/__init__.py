"""Training objectives behind one interface (see ``base.Objective``), built by name from a config."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from advcoreset.config import ObjectiveConfig, SelectionConfig
from advcoreset.objectives.base import Objective, ObjectiveOutput, eval_mode, weighted_mean
from advcoreset.objectives.lp import NFGSM, PGDAT, TRADES, FastAT, Standard
from advcoreset.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("objective")


@OBJECTIVES.register("standard")
def _standard(cfg: ObjectiveConfig, steps: int | None = None) -> Objective:
    return Standard()


@OBJECTIVES.register("pgd")
def _pgd(cfg: ObjectiveConfig, steps: int | None = None) -> Objective:
    a = cfg.attack
    return PGDAT(a.eps, a.alpha, a.steps if steps is None else steps, a.norm, a.random_start)


@OBJECTIVES.register("trades")
def _trades(cfg: ObjectiveConfig, steps: int | None = None) -> Objective:
    a = cfg.attack
    return TRADES(a.eps, a.alpha, a.steps if steps is None else steps, a.norm, cfg.beta)


@OBJECTIVES.register("fast")
def _fast(cfg: ObjectiveConfig, steps: int | None = None) -> Objective:
    # Fast-AT's step is 1.25 eps by definition; attack.alpha is the multi-step attacks' step.
    return FastAT(cfg.attack.eps, None, cfg.attack.norm)


@OBJECTIVES.register("nfgsm")
def _nfgsm(cfg: ObjectiveConfig, steps: int | None = None) -> Objective:
    # N-FGSM's noise (2 eps) and step (eps) are the paper's; attack.alpha is the multi-step attacks' step.
    return NFGSM(cfg.attack.eps)


from advcoreset.objectives import pat  # noqa: E402 - pat imports this package's base module

OBJECTIVES.register("pat", threat_model=pat.threat_model)(pat.build)


def available_objectives() -> list[str]:
    return OBJECTIVES.names()


def threat_model(cfg: ObjectiveConfig) -> dict[str, Any]:
    """The threat model an objective config trains for: {objective, norm, eps}, plus what the objective
    adds of its own (PAT: ``perceptual_bound``, ``lpips``). ``"perceptual_bound" in`` it marks a perceptual
    threat, which evaluation and export then cover too."""
    tm: dict[str, Any] = {"objective": cfg.name, "norm": cfg.attack.norm, "eps": cfg.attack.eps}
    own = OBJECTIVES.about(cfg.name).get("threat_model")
    if own is not None:
        tm.update(own(cfg))
    return tm


def build_objective(cfg: ObjectiveConfig, steps: int | None = None) -> Objective:
    """The objective a config names; ``steps`` overrides the attack's steps (e.g. a cheaper selection
    attack)."""
    fn: Callable[..., Objective] = OBJECTIVES.get(cfg.name)
    return fn(cfg, steps)


def build_selection_objective(cfg: ObjectiveConfig, sel: SelectionConfig) -> Objective:
    """The objective whose adversarial points selection reads gradients at: the training objective, with
    ``selection.attack_steps`` / ``attack_alpha`` when set (default step 2.5 eps / steps)."""
    if sel.attack_steps is None and sel.attack_alpha is None:
        return build_objective(cfg)
    cfg = copy.deepcopy(cfg)
    if sel.attack_steps is not None:
        cfg.attack.steps = sel.attack_steps
        cfg.attack.alpha = 2.5 * cfg.attack.eps / max(sel.attack_steps, 1)
    if sel.attack_alpha is not None:
        cfg.attack.alpha = sel.attack_alpha
    return build_objective(cfg, steps=sel.attack_steps)


__all__ = ["Objective", "ObjectiveOutput", "build_objective", "threat_model", "build_selection_objective",
           "available_objectives", "eval_mode", "weighted_mean", "OBJECTIVES", "NFGSM", "PGDAT", "TRADES", "FastAT",
           "Standard"]
