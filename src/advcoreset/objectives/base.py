"""The one objective interface: (model, x, y, weights) -> weighted loss and the adversarial inputs.

An objective is three small pieces, so training and coreset selection share them with no special case:

- ``attack(model, x, y)``: the inputs the loss is evaluated at (identity for standard training).
  Runs in the BatchNorm mode the objective's paper prescribes and restores the caller's mode.
- ``points(x, x_adv)``: which inputs the loss reads logits of (PGD-AT: ``[x_adv]``; TRADES: ``[x, x_adv]``).
- ``loss_from_logits(logits, y)``: the per-example loss (B,) from the logits at those points.

``__call__`` composes them for training. Selection (``advcoreset.selection.gradients``) calls the same
three with the backbone detached, to get per-example last-layer gradients in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class ObjectiveOutput:
    loss: Tensor
    """Scalar: sum_i w_i l_i / norm (norm = sum_i w_i unless the caller gives one)."""
    per_example: Tensor
    """(B,) per-example losses, detached."""
    logits: Tensor
    """(B, C) logits at the last point (the adversarial input, or the clean one), detached."""
    x_adv: Tensor
    """(B, C, H, W) the adversarial input the loss was evaluated at (== x for standard)."""


def weighted_mean(per_example: Tensor, weights: Tensor | None, norm: Tensor | float | None = None) -> Tensor:
    """sum_i w_i l_i / norm, with norm = sum_i w_i by default; uniform weights give exactly the mean.

    The trainer draws its mini-batches at random from the whole coreset, so members of different
    selected batches mix and a per-batch normaliser does not cancel batch-wise weights (it does in the
    official code, which trains on the selected batches as they are). ``optim.weight_norm=epoch`` passes
    ``norm = B * mean weight of the epoch`` instead.
    """
    if weights is None:
        return per_example.mean()
    weights = weights.to(per_example.dtype)
    if norm is None:
        norm = weights.sum()
    return (weights * per_example).sum() / norm


class Objective(nn.Module):
    """Base class; subclasses set ``name`` and override ``attack`` / ``points`` / ``loss_from_logits``."""

    name: str = "objective"

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """x: (B, C, H, W) in [0, 1], y: (B,) -> x_adv (B, C, H, W), detached. Default: no attack."""
        return x

    def points(self, x: Tensor, x_adv: Tensor) -> list[Tensor]:
        """The inputs whose logits ``loss_from_logits`` reads, in order."""
        return [x_adv]

    def loss_from_logits(self, logits: list[Tensor], y: Tensor) -> Tensor:
        """logits: one (B, C) tensor per point; y: (B,) -> per-example loss (B,)."""
        return nn.functional.cross_entropy(logits[-1], y, reduction="none")

    def loss_at(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, weights: Tensor | None = None,
                norm: Tensor | float | None = None) -> ObjectiveOutput:
        """The weighted loss at ``points(x, x_adv)`` in the model's current mode (training: train mode)."""
        pts = self.points(x, x_adv)
        # One forward over all points (TRADES: clean and adversarial together) is faster than two; BatchNorm
        # then sees both in one batch, where the reference TRADES code runs two separate passes.
        logits = model(torch.cat(pts)) if len(pts) > 1 else model(pts[0])
        parts = list(logits.split(x.shape[0]))
        per = self.loss_from_logits(parts, y)
        return ObjectiveOutput(weighted_mean(per, weights, norm), per.detach(), parts[-1].detach(), x_adv)

    def extra_evaluation(self, model: nn.Module, images: Tensor, labels: Tensor, *,
                         batch_size: int = 500) -> dict[str, Any]:
        """Accuracies under the objective's own threat models beyond the l_p PGD every run reports (PAT: its
        perceptual attacks), keyed without a split prefix. images: (N, C, H, W) uint8 or float in [0, 1];
        labels: (N,). Default: none."""
        return {}

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, weights: Tensor | None = None,
                norm: Tensor | float | None = None) -> ObjectiveOutput:
        """x: (B, C, H, W) in [0, 1], y: (B,), weights: (B,) or None -> ObjectiveOutput."""
        return self.loss_at(model, x, self.attack(model, x, y), y, weights, norm)


class eval_mode:
    """Context manager: put ``model`` in eval mode (BatchNorm frozen) and restore its mode after.

    Attacks run in eval mode so crafting perturbations does not update BatchNorm running statistics;
    training then resumes in the mode the caller had (the official TRADES code forgets this).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
