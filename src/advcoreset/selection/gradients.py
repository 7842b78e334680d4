"""Per-example last-layer gradients of any objective's loss, in closed form (no backbone backward).

For logits z = W h + b the per-example loss l(z_1, .., z_P; y) (P points: 1 for PGD-AT, 2 for TRADES)
has dl/dW = sum_p (dl/dz_p) h_p^T and dl/db = sum_p dl/dz_p. The backbone runs under no_grad; only
dl/dz_p is taken by autograd on the (B, C) logits, which for cross-entropy is softmax(z) - onehot(y).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advcoreset.objectives.base import Objective, eval_mode


def last_layer_grads(model: nn.Module, objective: Objective, x: Tensor, y: Tensor,
                     features: str = "last_layer") -> Tensor:
    """Per-example gradients of ``objective``'s loss at its adversarial points w.r.t. the final layer.

    Args:
        model: an ``ImageClassifier`` (needs ``features`` and ``head``).
        x: (B, C, H, W) inputs in [0, 1] (already augmented: the attack is computed on exactly these).
        y: (B,) labels.
        features: ``logits`` -> dl/db only, (B, C); ``last_layer`` -> [dl/db, dl/dW], (B, C + C*F).

    Returns:
        (B, D) float32 gradients, detached.
    """
    with eval_mode(model):
        x_adv = objective.attack(model, x, y)
        pts = objective.points(x, x_adv)
        with torch.no_grad():
            hs = list(model.features(torch.cat(pts)).float().split(x.shape[0]))
    zs = [(h @ model.head.weight.float().T + model.head.bias.float()).requires_grad_(True) for h in hs]
    with torch.enable_grad():
        per = objective.loss_from_logits(zs, y)
        dzs = torch.autograd.grad(per.sum(), zs)
    db = torch.stack(dzs).sum(0)
    if features == "logits":
        return db.detach()
    if features != "last_layer":
        raise ValueError(f"features must be 'logits' or 'last_layer', got {features!r}")
    dw = sum(dz.unsqueeze(2) * h.unsqueeze(1) for dz, h in zip(dzs, hs, strict=True))
    return torch.cat([db, dw.flatten(1)], 1).detach()
