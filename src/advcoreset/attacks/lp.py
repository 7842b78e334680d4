"""l_p attacks as short pure functions of (model, x, y, budget). Pixels and budgets are in [0, 1] units.

Every function returns a detached tensor of x's shape that lies in the eps-ball around x and in [0, 1].
None changes the model's mode or parameters' gradients; callers choose BatchNorm mode
(``advcoreset.objectives.base.eval_mode``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
"""(logits (B, C), y (B,)) -> per-example loss (B,) to *maximise*."""


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _flat_norm(v: Tensor) -> Tensor:
    """(B, ...) -> (B, 1, ..., 1) l_2 norms, broadcastable against v."""
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Project perturbations (B, ...) onto the l_inf or l_2 ball of radius eps."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        return delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def random_init(x: Tensor, eps: float, norm: str) -> Tensor:
    """A random perturbation in the eps-ball: uniform for l_inf, uniform in the l_2 ball for l_2;
    clipped so x + delta stays in [0, 1]."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    elif norm == "l2":
        d = torch.randn_like(x)
        n = x[0].numel()
        r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / n)
        delta = d / _flat_norm(d) * (eps * r).view(-1, *([1] * (x.dim() - 1)))
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return (x + delta).clamp(0, 1) - x


def _step(grad: Tensor, alpha: float, norm: str) -> Tensor:
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _flat_norm(grad)


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float, steps: int,
        norm: str = "linf", random_start: bool = True, restarts: int = 1, loss_fn: LossFn | None = None,
        early_stop: bool = False) -> Tensor:
    """Projected gradient ascent on ``loss_fn`` (default cross-entropy) in the l_inf or l_2 ball.

    Args:
        x: (B, C, H, W) clean inputs in [0, 1]; y: (B,) labels.
        eps: radius; alpha: step size (l_inf: sign step; l_2: normalised-gradient step).
        restarts: independent random starts; for each example a misclassifying restart is preferred, and
            among restarts that are alike in that respect, the one with the highest loss.
        early_stop: stop updating examples that are already misclassified (evaluation: it keeps the
            first found adversarial point and saves no work on correct ones).

    Returns:
        x_adv (B, C, H, W), detached, with ||x_adv - x|| <= eps and 0 <= x_adv <= 1.
    """
    if eps == 0 or steps == 0:
        return x.detach().clone()
    loss_fn = loss_fn or _ce
    x = x.detach()
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    best_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = random_init(x, eps, norm) if random_start else torch.zeros_like(x)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            loss = loss_fn(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                if early_stop:
                    active = active & (logits.argmax(1) == y)
                    grad = grad * active.view(-1, *([1] * (x.dim() - 1))).to(grad.dtype)
                delta = project(delta.detach() + _step(grad, alpha, norm), eps, norm)
                delta = (x + delta).clamp(0, 1) - x
        if restarts == 1 and not early_stop:
            return (x + delta).detach()  # training path: no extra forward to rank restarts
        with torch.no_grad():
            logits = model(x + delta)
            loss = loss_fn(logits, y)
            wrong = logits.argmax(1) != y
            # prefer a misclassifying restart; among equals, the higher loss
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best[better] = (x + delta)[better]
            best_loss = torch.where(better, loss, best_loss)
            best_wrong = best_wrong | wrong
    return best.detach()


def fgsm_rs(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float | None = None,
            norm: str = "linf") -> Tensor:
    """FGSM from a uniform random start (Wong, Rice, Kolter 2020): one step of size alpha (default
    1.25 eps), projected back to the eps-ball and [0, 1]. x: (B, C, H, W) -> x_adv of the same shape."""
    alpha = 1.25 * eps if alpha is None else alpha
    return pgd(model, x, y, eps=eps, alpha=alpha, steps=1, norm=norm, random_start=True)


def nfgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, noise: float | None = None,
          alpha: float | None = None) -> Tensor:
    """N-FGSM (de Jorge et al., NeurIPS 2022), l_inf: start at x + U[-noise, noise] (default 2 eps), take one
    signed-gradient step of ``alpha`` (default eps) and do *not* project back to the eps-ball; only [0, 1]
    is enforced. The result may lie up to noise + alpha from x (3 eps by default): the larger, noisier
    perturbation is what keeps single-step training from catastrophic overfitting.

    x: (B, C, H, W) in [0, 1], y: (B,) -> x_adv of the same shape in [0, 1], detached."""
    noise = 2 * eps if noise is None else noise
    alpha = eps if alpha is None else alpha
    x = x.detach()
    delta = ((x + torch.empty_like(x).uniform_(-noise, noise)).clamp(0, 1) - x).requires_grad_(True)
    (grad,) = torch.autograd.grad(_ce(model(x + delta), y).sum(), delta)
    return (x + delta.detach() + alpha * grad.sign()).clamp(0, 1).detach()


def kl_loss(clean_logits: Tensor) -> LossFn:
    """The TRADES attack loss KL(p(x) || p(x')) per example, with p(x) fixed from ``clean_logits``."""
    p = F.softmax(clean_logits.detach(), dim=1)
    logp = F.log_softmax(clean_logits.detach(), dim=1)

    def loss(logits: Tensor, _y: Tensor) -> Tensor:
        return (p * (logp - F.log_softmax(logits, dim=1))).sum(1)

    return loss


def trades_kl(model: nn.Module, x: Tensor, *, eps: float, alpha: float, steps: int, norm: str = "linf",
              clean_logits: Tensor | None = None) -> Tensor:
    """TRADES' inner maximisation: start at x + 0.001 N(0, 1), ascend KL(p(x) || p(x')).

    x: (B, C, H, W) -> x_adv of the same shape in the eps-ball and [0, 1]."""
    x = x.detach()
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = model(x)
    loss_fn = kl_loss(clean_logits)
    delta = project(0.001 * torch.randn_like(x), eps, norm)
    delta = (x + delta).clamp(0, 1) - x
    dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), dummy)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            delta = project(delta.detach() + _step(grad, alpha, norm), eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
