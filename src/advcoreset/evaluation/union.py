"""Accuracy under a union of threat models (PAT's evaluation): an example counts as robust only if no
attack in the list fools it. Each threat model keeps its own accuracy beside the union."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.attacks.lpips import LPIPS
from advcoreset.evaluation.autoattack import autoattack_robust_mask
from advcoreset.evaluation.robust import default_pgd_alpha, pgd_robust_mask
from advcoreset.progress import Reporter, reporter_or_silent


@dataclass(frozen=True)
class ThreatModel:
    name: str
    """Key in the result, e.g. ``linf_autoattack``."""
    kind: str
    """autoattack, pgd or perceptual."""
    norm: str = "linf"
    eps: float = 0.0
    """l_p radius (pixels in [0, 1]) or, for perceptual attacks, the LPIPS bound."""
    attack: str = ""
    """perceptual: ppgd or lpa."""
    steps: int = 20
    lpips: LPIPS | None = None
    """perceptual: the distance (None: the model's own self-bound LPIPS)."""
    lpips_name: str = "self-bound"
    """What ``lpips`` is, for the report (e.g. the AlexNet weights file)."""


def robust_mask(model: nn.Module, images: Tensor, labels: Tensor, tm: ThreatModel, *,
                aa_version: str = "standard", batch_size: int = 500, device: torch.device | str | None = None,
                progress: Reporter | None = None) -> tuple[Tensor, dict[str, Any]]:
    """(N,) bool robustness of every example under one threat model, and what ran. ``progress``: a
    reporter (``advcoreset.progress``), None: silent."""
    if tm.kind == "autoattack":
        mask, info = autoattack_robust_mask(model, images, labels, norm=tm.norm, eps=tm.eps, version=aa_version,
                                            batch_size=batch_size, device=device, progress=progress)
        return mask, info["autoattack"]
    if tm.kind == "pgd":
        alpha = default_pgd_alpha(tm.eps, tm.norm, tm.steps)
        mask = pgd_robust_mask(model, images, labels, eps=tm.eps, alpha=alpha, steps=tm.steps, norm=tm.norm,
                               batch_size=batch_size, device=device, progress=progress)
        return mask, {"norm": tm.norm, "eps": tm.eps, "steps": tm.steps, "alpha": alpha}
    if tm.kind == "perceptual":
        from advcoreset.attacks.perceptual import perceptual_robust_mask

        # the perceptual attacks report no batches: one task, so a long one still gets a closing line
        with reporter_or_silent(progress)(f"{tm.attack} (LPIPS bound {tm.eps:g})", 1) as task:
            mask = perceptual_robust_mask(model, images, labels, attack=tm.attack, bound=tm.eps, steps=tm.steps,
                                          lpips=tm.lpips, batch_size=batch_size)
            task.update(1, note=f"robust {int(mask.sum())}/{mask.numel()}")
        return mask, {"attack": tm.attack, "bound": tm.eps, "steps": tm.steps, "lpips": tm.lpips_name}
    raise ValueError(f"unknown threat model kind {tm.kind!r} (autoattack, pgd or perceptual)")


def union_accuracy(model: nn.Module, images: Tensor, labels: Tensor, threats: list[ThreatModel], *,
                   aa_version: str = "standard", batch_size: int = 500,
                   device: torch.device | str | None = None, progress: Reporter | None = None) -> dict[str, Any]:
    """{"<name>_acc": accuracy under each threat model, "union_acc": robust to all of them at once,
    "threat_models": what ran}. images: (N, C, H, W) uint8 or float in [0, 1]; labels: (N,)."""
    if not threats:
        raise ValueError("union_accuracy needs at least one threat model")
    out: dict[str, Any] = {"threat_models": {}}
    union = torch.ones(labels.shape[0], dtype=torch.bool)
    for tm in threats:
        mask, info = robust_mask(model, images, labels, tm, aa_version=aa_version, batch_size=batch_size,
                                 device=device, progress=progress)
        out[f"{tm.name}_acc"] = float(mask.float().mean())
        out["threat_models"][tm.name] = info
        union &= mask.cpu()
    out["union_acc"] = float(union.float().mean())
    return out
