"""Per-example last-layer gradients of any objective's loss, in closed form (no backbone backward).

For logits z = W h + b the per-example loss l(z_1, .., z_P; y) (P points: 1 for PGD-AT, 2 for TRADES)
has dl/dW = sum_p (dl/dz_p) h_p^T and dl/db = sum_p dl/dz_p. The backbone runs under no_grad; only
dl/dz_p is taken by autograd on the (B, C) logits, which for cross-entropy is softmax(z) - onehot(y).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advcoreset.models.adapter import LastLayer, last_layer
from advcoreset.objectives.base import Objective, eval_mode


def last_layer_grads(model: nn.Module, objective: Objective, x: Tensor, y: Tensor,
                     features: str = "last_layer", layer: LastLayer | None = None) -> Tensor:
    """Per-example gradients of ``objective``'s loss at its adversarial points w.r.t. the final layer.

    Args:
        model: any classifier whose final layer ``advcoreset.models.adapter.last_layer`` finds.
        x: (B, C, H, W) inputs in [0, 1] (already augmented: the attack is computed on exactly these).
        y: (B,) labels.
        features: ``logits`` -> dl/db only, (B, C); ``last_layer`` -> [dl/db, dl/dW], (B, C + C*F).
        layer: the model's (features, linear) pair; None finds it (checked on ``x``) at every call.

    Returns:
        (B, D) float32 gradients, detached.
    """
    if layer is None:
        layer = last_layer(model, x)
    with eval_mode(model):
        x_adv = objective.attack(model, x, y)
    return last_layer_grads_at(model, objective, x, x_adv, y, features, layer)


def last_layer_grads_at(model: nn.Module, objective: Objective, x: Tensor, x_adv: Tensor, y: Tensor,
                        features: str = "last_layer", layer: LastLayer | None = None) -> Tensor:
    """``last_layer_grads`` at adversarial inputs ``x_adv`` (B, C, H, W) already found by ``objective.attack``, so
    that a caller can time the attack apart from the gradients. Returns (B, D) float32 gradients, detached."""
    if layer is None:
        layer = last_layer(model, x)
    head = layer.linear
    with eval_mode(model):
        pts = objective.points(x, x_adv)
        with torch.no_grad():
            hs = list(layer.features(torch.cat(pts)).float().split(x.shape[0]))
    bias = head.bias.float() if head.bias is not None else 0.0
    zs = [(h @ head.weight.float().T + bias).requires_grad_(True) for h in hs]
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
