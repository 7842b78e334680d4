"""Helpers every evaluation module shares: where the model lives, images to [0, 1] floats, and the check that
an attack stayed inside its budget. (Kept apart from ``robust`` so that ``autoattack`` and ``robust`` need not
import each other.)"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def model_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter or buffer (CPU if none)."""
    if device is not None:
        return torch.device(device)
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_unit(images: Tensor, device: torch.device) -> Tensor:
    """(B, C, H, W) uint8 or float in [0, 1] -> float on ``device`` in [0, 1] (uint8 divided by 255)."""
    if images.dtype == torch.uint8:
        return images.to(device).float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got dtype {images.dtype}")
    x = images.to(device)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"float images must lie in [0, 1] (got range [{float(x.min()):.4g}, "
                         f"{float(x.max()):.4g}]); pass uint8 images or divide by 255")
    return x


def check_perturbation(x_adv: Tensor, x: Tensor, *, eps: float, norm: str, attack: str,
                       tol: float = 1e-5) -> None:
    """Raise if any adversarial example leaves the eps-ball (+ ``tol``) around x or the [0, 1] box.

    x_adv, x: (B, C, H, W). An attack that steps outside its budget would report a robust accuracy that
    is silently too low; better to stop.
    """
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{attack} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise RuntimeError(f"{attack} returned non-finite adversarial examples")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < 0.0 or hi > 1.0:
        raise RuntimeError(f"{attack} returned pixels outside [0, 1] (range [{lo:.6g}, {hi:.6g}])")
    d = (x_adv.detach().double() - x.detach().double()).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    worst = float(dist.max()) if dist.numel() else 0.0
    if worst > eps + tol:
        bad = int((dist > eps + tol).sum())
        raise RuntimeError(f"{attack} returned {bad} example(s) outside the {norm} ball: max distance "
                           f"{worst:.6g} > eps {eps:.6g} (+{tol:g})")
