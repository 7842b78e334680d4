"""Perceptual attacks of Laidlaw, Singla, Feizi (ICLR 2021) as short pure functions, plus evaluation.

Threat model: {x' in [0, 1]^n : d(x, x') <= bound} with d the LPIPS distance of
``advcoreset.attacks.lpips`` (sqrt of uniformly weighted LPIPS). All attacks maximise the margin loss
max_{i != y} z_i - z_y (optionally capped at ``kappa``) and take steps measured in LPIPS units: a unit
direction u (l_2-normalised gradient) is scaled by eta / m, where m = d(x~, x~ + h u) / h is a
finite-difference estimate of how fast d grows along u. So each step moves about eta in LPIPS distance.

- ``fast_lpa``: the training attack (paper's Fast-LPA). Lagrangian penalty lambda * max(0, d - bound),
  lambda_t = lambda_init * lambda_growth ** (t / T) and eta_t = bound * 0.1 ** (t / T) for t = 0..T-1
  (lambda grows from lambda_init towards lambda_init * growth, the step decays from bound to ~bound/10).
  No projection: in training the bound is soft, as in the paper.
- ``lpa``: evaluation LPA. ``search_steps`` rounds of ``steps`` Lagrangian steps; an example's lambda is
  multiplied by ``lambda_factor`` after a round that ends outside the bound; ends with a projection.
- ``ppgd``: evaluation Perceptual PGD: a step of LPIPS length ``step_size`` along the normalised margin
  gradient, then projection onto the LPIPS ball, repeated. The paper picks the step direction by solving
  the linearised problem with conjugate gradient on J^T J (J: Jacobian of phi); we use the Jacobian-free
  approximation J^T J ~ I (plain normalised gradient), rescaled by the finite-difference slope above.
- ``project_lpips``: a few first-order Newton steps on d(x, .) = bound (as in the paper), then a
  bisection along the segment x -> x' that keeps a feasible end point, so the result is always within
  the bound as measured by the same LPIPS (d(x, x) = 0 makes t = 0 feasible).

Evaluation attacks freeze an example as soon as an iterate is misclassified *and* within the bound, so
the final projection cannot undo a success; the returned batch is in [0, 1] and d(x, x_adv) <= bound
(up to float round-off of the distance's own computation).

Bounds. The paper uses 0.5 with AlexNet LPIPS on CIFAR-10 and picks the bound so the perceptual ball
contains the usual l_p perturbations. Self-bound distances have their own scale, which also shrinks as a
model becomes robust. Measured on Fashion-MNIST with ``small_cnn`` (32-64), median self-LPIPS of an
l_inf-0.1 PGD-20 perturbation: 0.53-0.61 on standard-trained nets, 0.20-0.29 on PGD-AT / PAT nets (a
random-sign l_inf-0.1 perturbation: 0.56 standard, 0.23 robust). We default to ``FMNIST_SELF_BOUND = 0.5``
(the config's default too): it contains the l_inf-0.1 threat for robust models, as the paper's bound
does. A CPU check (6,000 training images, 3 epochs, 300 test images, PPGD-10 / LPA 5x10, self-bound
LPIPS of each model, bound 0.5): standard 86% clean, 1% / 0%; PGD-AT (l_inf 0.1) 80%, 10% / 5%;
PAT (0.5) 60%, 39% / 33% and 51% l_inf-0.1 PGD-20 accuracy (an unseen threat model).

None of these functions changes the model's mode or its parameters' gradients; callers choose the
BatchNorm mode (``SelfLPIPS`` computes its features in eval mode by itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypedDict, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advcoreset.attacks.lpips import LPIPS, SelfLPIPS, normalize_maps
from advcoreset.models.base import ImageClassifier

FMNIST_SELF_BOUND = 0.5
"""Default self-bound LPIPS radius for Fashion-MNIST / small_cnn (its ball contains l_inf-0.1 attacks on
robust models; see the module docstring)."""

Embedding = list[Tensor]


class _ProjectKwargs(TypedDict):
    """The keyword arguments ``ppgd`` passes to every ``project_lpips`` call."""

    e_x: Embedding
    newton_steps: int
    bisection_steps: int


# ------------------------------------------------------------------------------------------ helpers
def margin_loss(logits: Tensor, y: Tensor, kappa: float = math.inf) -> Tensor:
    """Carlini-Wagner margin max_{i != y} z_i - z_y, capped above at kappa. logits (B, C), y (B,) -> (B,)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    m = others - z_y
    return m.clamp(max=kappa) if math.isfinite(kappa) else m


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def _unit(g: Tensor) -> Tensor:
    """Per-example l_2-normalised direction; an all-zero gradient stays zero. (B, ...) -> (B, ...)."""
    n = g.flatten(1).norm(dim=1)
    return g / _view(n.clamp_min(1e-12), g)


def _fused(model: nn.Module, lpips: LPIPS) -> TypeGuard[ImageClassifier]:
    """Self-bound LPIPS on a stock ImageClassifier: logits and phi come from one forward pass."""
    return (isinstance(lpips, SelfLPIPS) and lpips.model is model and isinstance(model, ImageClassifier)
            and type(model).forward is ImageClassifier.forward
            and type(model).features is ImageClassifier.features
            and type(model).feature_maps is ImageClassifier.feature_maps)


def _logits_and_embedding(model: nn.Module, lpips: LPIPS, x: Tensor) -> tuple[Tensor, Embedding]:
    """x (B, C, H, W) -> (logits (B, K), phi(x)). One pass for self-bound LPIPS, two otherwise."""
    if _fused(model, lpips):
        maps = lpips.feature_maps(x)
        logits = model.head(torch.flatten(model.pool(maps[-1]), 1))
        return logits, normalize_maps(maps)
    return model(x), lpips.embed(x)


@torch.no_grad()
def _embed(lpips: LPIPS, x: Tensor) -> Embedding:
    return [m.detach() for m in lpips.embed(x)]


@torch.no_grad()
def _step(lpips: LPIPS, x_cur: Tensor, e_cur: Embedding, grad: Tensor, eta: float | Tensor,
          h: float) -> Tensor:
    """Move x_cur (B, C, H, W) about eta in LPIPS distance along the normalised gradient; clip to [0, 1]."""
    u = _unit(grad)
    slope = lpips.distance([m.detach() for m in e_cur], _embed(lpips, x_cur + h * u)) / h
    scale = torch.as_tensor(eta, dtype=x_cur.dtype, device=x_cur.device) / slope.clamp_min(1e-6)
    return (x_cur + _view(scale, x_cur) * u).clamp(0, 1)


def _random_start(x: Tensor, std: float) -> Tensor:
    return (x + std * torch.randn_like(x)).clamp(0, 1) if std > 0 else x.clone()


def _check(bound: float, steps: int) -> None:
    if not bound > 0:
        raise ValueError(f"perceptual attack bound must be > 0, got {bound}")
    if steps < 0:
        raise ValueError(f"perceptual attack steps must be >= 0, got {steps}")


# ------------------------------------------------------------------------------------- projection
def project_lpips(lpips: LPIPS, x: Tensor, x_adv: Tensor, bound: float, *, e_x: Embedding | None = None,
                  newton_steps: int = 10, bisection_steps: int = 12, aim: float = 0.98) -> Tensor:
    """Project x_adv onto {x' in [0, 1]: d(x, x') <= bound}, approximately but always feasibly.

    Newton phase (the paper's): for examples outside, x' <- x' - (d - aim * bound) grad d / ||grad d||^2,
    clipped to [0, 1]. Bisection phase: any example still outside is replaced by x + t (x' - x) with the
    largest t in [0, 1] found feasible after ``bisection_steps`` halvings (t = 0 is always feasible).
    Examples already inside are returned unchanged.

    x, x_adv: (B, C, H, W) in [0, 1]; e_x: phi(x) if already computed. Returns (B, C, H, W), detached.
    """
    x = x.detach()
    e_x = _embed(lpips, x) if e_x is None else e_x
    cur = x_adv.detach()
    d = lpips.distance(_embed(lpips, cur), e_x)
    for _ in range(newton_steps):
        outside = d > bound
        if not bool(outside.any()):
            return cur
        cur.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(lpips.distance(lpips.embed(cur), e_x).sum(), cur)
        with torch.no_grad():
            r = (d - aim * bound).clamp_min(0) * outside
            step = r / g.flatten(1).pow(2).sum(1).clamp_min(1e-12)
            cur = (cur.detach() - _view(step, cur) * g).clamp(0, 1)
            d = lpips.distance(_embed(lpips, cur), e_x)
    outside = d > bound
    if bool(outside.any()):
        with torch.no_grad():
            lo = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
            hi = torch.ones_like(lo)
            for _ in range(bisection_steps):
                mid = (lo + hi) / 2
                ok = lpips.distance(_embed(lpips, x + _view(mid, x) * (cur - x)), e_x) <= bound
                lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
            t = torch.where(outside, lo, torch.ones_like(lo))
            cur = x + _view(t, x) * (cur - x)
    return cur


# --------------------------------------------------------------------------------------- attacks
def fast_lpa(model: nn.Module, x: Tensor, y: Tensor, lpips: LPIPS, *, bound: float, steps: int,
             lambda_init: float = 1.0, lambda_growth: float = 10.0, step_decay: float = 0.1,
             h: float = 0.1, init_std: float = 0.01, kappa: float = math.inf) -> Tensor:
    """Fast Lagrangian Perceptual Attack (PAT's training attack), batched.

    Maximises margin(f(x~), y) - lambda_t max(0, d(x~, x) - bound) with LPIPS-length steps
    eta_t = bound * step_decay ** (t / steps) and lambda_t = lambda_init * lambda_growth ** (t / steps),
    t = 0..steps-1, from x~ = x + init_std N(0, 1). No projection (the bound is soft in training): on a
    standard-trained net the points typically end 1.5-2x outside the bound (steeper margin gradients than
    lambda * grad d); a larger ``lambda_init`` keeps them closer.

    Args:
        x: (B, C, H, W) clean inputs in [0, 1]; y: (B,) labels; lpips: the distance (self-bound or not).
        bound: LPIPS radius; steps: iterations (0 returns x unchanged).
        h: finite-difference length (l_2, pixel units) for the step-size slope.

    Returns:
        x_adv (B, C, H, W) in [0, 1], detached.
    """
    _check(bound, steps)
    x = x.detach()
    if steps == 0:
        return x.clone()
    e_x = _embed(lpips, x)
    x_adv = _random_start(x, init_std)
    for t in range(steps):
        frac = t / steps
        lam, eta = lambda_init * lambda_growth ** frac, bound * step_decay ** frac
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits, e = _logits_and_embedding(model, lpips, x_adv)
            d = lpips.distance(e, e_x)
            obj = margin_loss(logits, y, kappa) - lam * F.relu(d - bound)
            (grad,) = torch.autograd.grad(obj.sum(), x_adv)
        x_adv = _step(lpips, x_adv.detach(), e, grad, eta, h)
    return x_adv.detach()


def lpa(model: nn.Module, x: Tensor, y: Tensor, lpips: LPIPS, *, bound: float, steps: int,
        search_steps: int = 5, lambda_init: float = 0.01, lambda_factor: float = 10.0,
        step_size: float | None = None, step_decay: float = 0.1, h: float = 0.1, init_std: float = 0.01,
        kappa: float = 1.0, newton_steps: int = 10, bisection_steps: int = 12) -> Tensor:
    """Lagrangian Perceptual Attack (evaluation), batched; ends within the bound.

    ``search_steps`` rounds of ``steps`` iterations (so search_steps * steps gradient steps). Each
    iteration ascends margin (capped at kappa) - lambda max(0, d - bound) with an LPIPS-length step
    step_size * step_decay ** (t / steps) (step_size defaults to bound). After a round, examples outside
    the bound get lambda *= lambda_factor. An example is frozen once an iterate is misclassified and
    within the bound. Finally ``project_lpips``.

    x: (B, C, H, W) in [0, 1]; y: (B,). Returns x_adv (B, C, H, W) in [0, 1] with d(x, x_adv) <= bound.
    """
    _check(bound, steps)
    x = x.detach()
    step_size = bound if step_size is None else step_size
    e_x = _embed(lpips, x)
    x_adv = _random_start(x, init_std)
    lam = torch.full((x.shape[0],), lambda_init, device=x.device, dtype=x.dtype)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(search_steps):
        for t in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits, e = _logits_and_embedding(model, lpips, x_adv)
                d = lpips.distance(e, e_x)
                obj = margin_loss(logits, y, kappa) - lam * F.relu(d - bound)
                (grad,) = torch.autograd.grad(obj.sum(), x_adv)
            with torch.no_grad():
                done |= (logits.argmax(1) != y) & (d <= bound)
                grad = grad * _view(~done, grad).to(grad.dtype)
            x_adv = _step(lpips, x_adv.detach(), e, grad, step_size * step_decay ** (t / steps), h)
        with torch.no_grad():
            outside = lpips.distance(_embed(lpips, x_adv), e_x) > bound
            lam = torch.where(outside, lam * lambda_factor, lam)
    return project_lpips(lpips, x, x_adv, bound, e_x=e_x, newton_steps=newton_steps,
                         bisection_steps=bisection_steps)


def ppgd(model: nn.Module, x: Tensor, y: Tensor, lpips: LPIPS, *, bound: float, steps: int,
         step_size: float | None = None, h: float = 0.1, init_std: float = 0.01, kappa: float = 1.0,
         newton_steps: int = 10, bisection_steps: int = 12) -> Tensor:
    """Perceptual PGD (evaluation), batched; every iterate is projected, so it ends within the bound.

    Each step moves ``step_size`` (default 2 bound / steps, the paper's) in LPIPS distance along the
    normalised gradient of the margin loss (capped at kappa), clips to [0, 1] and projects with
    ``project_lpips``. Examples whose current (feasible) iterate is misclassified are frozen.

    x: (B, C, H, W) in [0, 1]; y: (B,). Returns x_adv (B, C, H, W) in [0, 1] with d(x, x_adv) <= bound.
    """
    _check(bound, steps)
    x = x.detach()
    step_size = 2 * bound / max(steps, 1) if step_size is None else step_size
    e_x = _embed(lpips, x)
    proj = _ProjectKwargs(e_x=e_x, newton_steps=newton_steps, bisection_steps=bisection_steps)
    x_adv = project_lpips(lpips, x, _random_start(x, init_std), bound, **proj)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits, e = _logits_and_embedding(model, lpips, x_adv)
            (grad,) = torch.autograd.grad(margin_loss(logits, y, kappa).sum(), x_adv)
        with torch.no_grad():
            done |= logits.argmax(1) != y
            grad = grad * _view(~done, grad).to(grad.dtype)
        x_adv = project_lpips(lpips, x, _step(lpips, x_adv.detach(), e, grad, step_size, h), bound, **proj)
    return x_adv.detach()


ATTACKS: dict[str, Callable[..., Tensor]] = {"ppgd": ppgd, "lpa": lpa}


def perceptual_robust_mask(model: nn.Module, images: Tensor, labels: Tensor, *, attack: str = "ppgd",
                        bound: float = FMNIST_SELF_BOUND, steps: int = 10, lpips: LPIPS | None = None,
                        batch_size: int = 256, **attack_kwargs: object) -> Tensor:
    """(N,) bool on the CPU: correct under a perceptual attack (``ppgd`` or ``lpa``), model in eval mode.

    An example counts as correct only if the model is right on both x and x_adv (x itself lies in the
    ball). ``lpips`` defaults to the model's own self-bound LPIPS. The model's mode is restored.

    images: (N, C, H, W) float in [0, 1] or uint8 in 0..255 (any device; batches move to the model's);
    labels: (N,). Extra keyword arguments go to the attack (e.g. ``search_steps`` for LPA).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {sorted(ATTACKS)}, got {attack!r}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError("perceptual_accuracy needs at least one image")
    fn = ATTACKS[attack]
    device = next(model.parameters()).device
    dist = SelfLPIPS(model) if lpips is None else lpips.to(device)
    was_training = model.training
    model.eval()
    masks = []
    try:
        for i in range(0, images.shape[0], batch_size):
            xb = images[i:i + batch_size].to(device)
            xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb
            yb = labels[i:i + batch_size].to(device)
            x_adv = fn(model, xb, yb, dist, bound=bound, steps=steps, **attack_kwargs)
            with torch.no_grad():
                # As check_perturbation does for l_p: an attack that left its ball would report too low
                # an accuracy, silently. Measured by the same LPIPS; 0.1% slack for float noise.
                d = dist.distance(dist.embed(x_adv), dist.embed(xb))
                if not bool(torch.isfinite(x_adv).all()) or bool((d > bound * 1.001 + 1e-6).any()):
                    raise RuntimeError(f"{attack} returned examples outside the LPIPS ball: max distance "
                                       f"{float(d.max()):.6g} > bound {bound:.6g}")
                ok = (model(xb).argmax(1) == yb) & (model(x_adv).argmax(1) == yb)
            masks.append(ok.cpu())
    finally:
        model.train(was_training)
    return torch.cat(masks)


def perceptual_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, attack: str = "ppgd",
                        bound: float = FMNIST_SELF_BOUND, steps: int = 10, lpips: LPIPS | None = None,
                        batch_size: int = 256, **attack_kwargs: object) -> float:
    """Accuracy in [0, 1] under a perceptual attack; see ``perceptual_robust_mask``."""
    return float(perceptual_robust_mask(model, images, labels, attack=attack, bound=bound, steps=steps,
                                        lpips=lpips, batch_size=batch_size, **attack_kwargs).float().mean())
