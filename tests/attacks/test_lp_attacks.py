"""l_p attacks (attacks/lp.py) and the objectives built on them (objectives/lp.py), against known answers:
closed-form worst cases of linear models, brute-force per-example gradients, hand-computed losses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advcoreset.attacks import fgsm_rs, kl_loss, nfgsm, pgd, project, random_init, trades_kl
from advcoreset.models.base import ImageClassifier
from advcoreset.models.cnn import small_cnn
from advcoreset.objectives import NFGSM, PGDAT, TRADES, FastAT, Standard, weighted_mean
from advcoreset.selection.gradients import last_layer_grads

SHAPE = (1, 4, 4)  # tiny images keep every test well under a second


def linear_model(num_classes: int = 2, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> ImageClassifier:
    """logits = W flatten(x) + b as an ImageClassifier (no stages, identity normalisation), float64."""
    torch.manual_seed(seed)
    d = shape[0] * shape[1] * shape[2]
    model = ImageClassifier([], nn.Flatten(), d, num_classes, [0.0] * shape[0], [1.0] * shape[0])
    nn.init.normal_(model.head.weight)
    nn.init.normal_(model.head.bias, std=0.1)
    return model.double().eval()


def cnn(seed: int = 0, num_classes: int = 10, side: int = 8, head_scale: float = 4.0) -> ImageClassifier:
    """A small random CNN with a scaled-up head, so its loss surface is not flat."""
    torch.manual_seed(seed)
    model = small_cnn(1, num_classes, side, [0.5], [0.25], width=4, hidden=16)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    return model.eval()


def bn_model(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    stages = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())]
    return ImageClassifier(stages, nn.AdaptiveAvgPool2d(1), 4, 3, [0.5], [0.25])


def distances(x_adv: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1), d.norm(dim=1)


def assert_in_ball(x_adv: Tensor, x: Tensor, eps: float, norm: str, tol: float = 1e-6) -> None:
    linf, l2 = distances(x_adv, x)
    dist = linf if norm == "linf" else l2
    assert float(dist.max()) <= eps + tol, f"{norm} distance {float(dist.max())} > eps {eps}"
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def random_noise(x: Tensor, eps: float, norm: str) -> Tensor:
    """A random perturbation on the sphere of radius eps (sign noise for l_inf), clipped to [0, 1]."""
    if norm == "linf":
        delta = eps * torch.randint(0, 2, x.shape, dtype=x.dtype).mul(2).sub(1)
    else:
        g = torch.randn_like(x)
        delta = eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (x + delta).clamp(0, 1)


def binary_margin(model: ImageClassifier, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        z = model(x)
    return z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)


# ----------------------------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("norm,eps_list", [("linf", [0.01, 0.1, 0.3]), ("l2", [0.1, 0.5, 2.0])])
def test_pgd_stays_in_ball_and_box(norm: str, eps_list: list[float]) -> None:
    model = cnn()
    torch.manual_seed(1)
    x = torch.rand(16, 1, 8, 8)
    x[:4] = x[:4].round()  # pixels exactly at 0 and 1: the box constraint is active
    y = torch.randint(0, 10, (16,))
    for eps in eps_list:
        for kw in ({}, {"restarts": 2, "early_stop": True}, {"random_start": False}):
            x_adv = pgd(model, x, y, eps=eps, alpha=eps / 3, steps=5, norm=norm, **kw)
            assert x_adv.shape == x.shape and not x_adv.requires_grad
            assert_in_ball(x_adv, x, eps, norm)
            assert float(distances(x_adv, x)[0 if norm == "linf" else 1].max()) > 0.5 * eps


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_pgd_raises_loss_over_clean_and_random_noise(norm: str, eps: float) -> None:
    model = cnn(seed=2)
    torch.manual_seed(3)
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    x_adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm)
    adv, clean, noise = ce(model, x_adv, y), ce(model, x, y), ce(model, random_noise(x, eps, norm), y)
    assert bool((adv > clean).all())
    assert float((adv > noise).float().mean()) >= 0.95 and float(adv.mean()) > float(noise.mean()) + 0.1


@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_pgd_linf_reaches_closed_form_worst_case_of_linear_model(eps: float) -> None:
    model = linear_model(2)
    torch.manual_seed(4)
    x = 0.3 + 0.4 * torch.rand(24, *SHAPE, dtype=torch.float64)  # interior: the [0, 1] box is inactive
    y = torch.randint(0, 2, (24,))
    w = model.head.weight.detach()
    d = w[y] - w[1 - y]  # (B, D): margin = d . x + (b_y - b_other)
    x_adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=12, norm="linf")
    expected_delta = -eps * d.sign()
    torch.testing.assert_close((x_adv - x).flatten(1), expected_delta, atol=1e-12, rtol=0)
    expected_margin = binary_margin(model, x, y) - eps * d.abs().sum(1)
    torch.testing.assert_close(binary_margin(model, x_adv, y), expected_margin, atol=1e-4, rtol=0)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_pgd_l2_reaches_closed_form_worst_case_of_linear_model(eps: float) -> None:
    model = linear_model(2)
    torch.manual_seed(5)
    x = 0.3 + 0.4 * torch.rand(24, *SHAPE, dtype=torch.float64)  # eps <= 0.3: stays inside [0, 1]
    y = torch.randint(0, 2, (24,))
    w = model.head.weight.detach()
    d = w[y] - w[1 - y]
    x_adv = pgd(model, x, y, eps=eps, alpha=eps, steps=60, norm="l2")
    torch.testing.assert_close((x_adv - x).flatten(1), -eps * d / d.norm(dim=1, keepdim=True),
                               atol=1e-8, rtol=0)
    expected_margin = binary_margin(model, x, y) - eps * d.norm(dim=1)
    torch.testing.assert_close(binary_margin(model, x_adv, y), expected_margin, atol=1e-4, rtol=0)


def test_fgsm_rs_default_step_is_1_25_eps_and_stays_in_ball() -> None:
    model = linear_model(2)
    eps = 0.05
    torch.manual_seed(6)
    x = 0.3 + 0.4 * torch.rand(64, *SHAPE, dtype=torch.float64)
    y = torch.randint(0, 2, (64,))
    w = model.head.weight.detach()
    ascent = -(w[y] - w[1 - y]).sign().view_as(x)  # sign of dCE/dx for a binary linear model
    torch.manual_seed(7)
    x_adv = fgsm_rs(model, x, y, eps=eps)
    torch.manual_seed(7)
    start = random_init(x, eps, "linf")  # the same random start fgsm_rs draws
    for alpha, expect_equal in ((1.25 * eps, True), (eps, False)):
        expected = x + (start + alpha * ascent).clamp(-eps, eps)
        assert torch.allclose(x_adv, expected, atol=1e-12) == expect_equal
    assert_in_ball(x_adv, x, eps, "linf", tol=1e-12)
    model_cnn = cnn()
    xc = torch.rand(16, 1, 8, 8)
    for norm, e in (("linf", 0.1), ("l2", 1.0)):
        assert_in_ball(fgsm_rs(model_cnn, xc, torch.randint(0, 10, (16,)), eps=e, norm=norm), xc, e, norm)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_trades_kl_increases_kl_and_stays_in_ball(norm: str, eps: float) -> None:
    model = cnn(seed=8)
    torch.manual_seed(9)
    x = torch.rand(32, 1, 8, 8)
    x_adv = trades_kl(model, x, eps=eps, alpha=eps / 4, steps=10, norm=norm)
    assert_in_ball(x_adv, x, eps, norm)
    with torch.no_grad():
        clean = model(x)
        kl = kl_loss(clean)
        dummy = torch.zeros(32, dtype=torch.long)
        kl_adv, kl_noise = kl(model(x_adv), dummy), kl(model(random_noise(x, eps, norm)), dummy)
        kl_clean = kl(clean, dummy)
    assert float(kl_clean.abs().max()) < 1e-6
    assert bool((kl_adv > 1e-4).all())
    assert float((kl_adv > kl_noise).float().mean()) >= 0.95
    assert float(kl_adv.mean()) > 2 * float(kl_noise.mean())


def test_restarts_keep_a_misclassifying_restart_else_highest_loss() -> None:
    model = cnn(seed=10, head_scale=8.0)
    torch.manual_seed(11)
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct clean: flips come from the attack
    eps, steps, restarts = 0.03, 2, 4
    torch.manual_seed(12)
    singles = [pgd(model, x, y, eps=eps, alpha=eps / 2, steps=steps) for _ in range(restarts)]
    torch.manual_seed(12)  # pgd draws only the random starts: the same stream gives the same restarts
    multi = pgd(model, x, y, eps=eps, alpha=eps / 2, steps=steps, restarts=restarts)
    with torch.no_grad():
        wrong = torch.stack([model(s).argmax(1) != y for s in singles])  # (R, B)
        losses = torch.stack([ce(model, s, y) for s in singles])
    any_wrong = wrong.any(0)
    # the instance must contain both cases, and examples fooled by some restarts but not by the first
    assert 0 < int(any_wrong.sum()) < 64 and bool((any_wrong & ~wrong[0]).any())
    stacked = torch.stack(singles)  # (R, B, C, H, W)
    same = (stacked == multi.unsqueeze(0)).flatten(2).all(2)  # (R, B): which restarts multi returned
    assert bool(same.any(0).all()), "every example must come from one of the restarts"
    # fooled by some restart -> a fooling restart is kept; otherwise the highest-loss restart
    assert bool((same & wrong).any(0)[any_wrong].all())
    best_loss = losses.argmax(0)
    assert bool(same[best_loss, torch.arange(64)][~any_wrong].all())
    with torch.no_grad():
        assert torch.equal(model(multi).argmax(1) != y, any_wrong)


def test_early_stop_freezes_examples_at_first_misclassifying_iterate() -> None:
    base = linear_model(2)
    iterates: list[Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            iterates.append(x.detach().clone())
            return base(x)

    torch.manual_seed(13)
    x = 0.3 + 0.4 * torch.rand(64, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        y = base(x).argmax(1)
    eps, steps = 0.05, 20
    x_adv = pgd(Recorder(), x, y, eps=eps, alpha=eps / 20, steps=steps, early_stop=True)
    its = torch.stack(iterates[: steps + 1])  # (steps + 1, B, ...): the iterates, the last one ranked
    with torch.no_grad():
        wrong = torch.stack([base(it).argmax(1) != y for it in its])  # (T, B)
    ever = wrong.any(0)
    first = wrong.float().argmax(0)
    assert bool((ever & (first > 0)).sum() >= 3) and bool((~ever).sum() >= 3), "test instance lacks variety"
    for i in range(64):
        if ever[i]:
            frozen = its[int(first[i]):, i]
            assert torch.equal(x_adv[i], its[int(first[i]), i])
            assert bool((frozen == frozen[0]).all()), f"example {i} moved after it was misclassified"
        else:
            assert torch.equal(x_adv[i], its[-1, i])
            assert not torch.equal(its[-1, i], its[0, i])
    # without early stop, the same misclassified examples are pushed further
    torch.manual_seed(14)
    no_stop = pgd(base, x, y, eps=eps, alpha=eps / 20, steps=steps)
    further = binary_margin(base, no_stop, y)[ever]
    assert float(further.mean()) < float(binary_margin(base, x_adv, y)[ever].mean())


def test_eps_zero_returns_x() -> None:
    model = cnn()
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    for norm in ("linf", "l2"):
        assert torch.equal(pgd(model, x, y, eps=0.0, alpha=0.01, steps=5, norm=norm), x)
        assert torch.equal(fgsm_rs(model, x, y, eps=0.0, norm=norm), x)
        assert torch.equal(trades_kl(model, x, eps=0.0, alpha=0.01, steps=3, norm=norm), x)
        assert torch.equal(project(torch.randn(8, 1, 8, 8), 0.0, norm), torch.zeros(8, 1, 8, 8))


def test_attacks_leave_mode_and_parameter_grads_alone() -> None:
    model = bn_model().train()
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 3, (8,))
    pgd(model, x, y, eps=0.05, alpha=0.01, steps=2)
    trades_kl(model, x, eps=0.05, alpha=0.01, steps=2)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_unknown_norm_is_rejected() -> None:
    with pytest.raises(ValueError, match="norm"):
        project(torch.zeros(2, 1, 2, 2), 0.1, "l1")


# -------------------------------------------------------------------------------------------- objectives


def _fixed_attack(x_adv: Tensor):
    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        assert x.shape == x_adv.shape
        return x_adv

    return attack


@pytest.mark.parametrize("make", [Standard, lambda: PGDAT(0.05, 0.02, 3), lambda: TRADES(0.05, 0.02, 3)])
def test_uniform_weights_give_the_unweighted_mean(make, monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn()
    torch.manual_seed(15)
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    obj = make()
    monkeypatch.setattr(obj, "attack", _fixed_attack((x + 0.03 * torch.randn_like(x)).clamp(0, 1)))
    plain = obj(model, x, y).loss
    for c in (1.0, 0.5, 4.0):  # powers of two: scaling is exact in floating point
        assert torch.equal(obj(model, x, y, weights=torch.full((16,), c)).loss, plain)
    for c in (3.0, 0.1):
        torch.testing.assert_close(obj(model, x, y, weights=torch.full((16,), c)).loss, plain,
                                   rtol=1e-6, atol=0)
    per = obj(model, x, y).per_example
    w = torch.rand(16)
    torch.testing.assert_close(weighted_mean(per, w), (w * per).sum() / w.sum())


def test_trades_attack_leaves_bn_stats_and_training_resumes_in_train_mode() -> None:
    model = bn_model().train()
    ref = copy.deepcopy(model)
    torch.manual_seed(16)
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 3, (8,))
    obj = TRADES(eps=0.1, alpha=0.03, steps=3, beta=6.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(17)
    x_adv = obj.attack(model, x, y)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"the attack changed {k}"

    torch.manual_seed(17)
    out = obj(model, x, y)
    assert model.training
    assert torch.equal(out.x_adv, x_adv)
    # by hand: one train-mode forward over [x, x_adv] (updates BN once), CE + beta KL
    logits = ref.train()(torch.cat([x, x_adv]))
    clean, adv = logits[:8], logits[8:]
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="none").sum(1)
    torch.testing.assert_close(out.loss, (F.cross_entropy(clean, y, reduction="none") + 6.0 * kl).mean())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k])
    bn = "stages.0.1.running_mean"
    assert not torch.equal(model.state_dict()[bn], before[bn]), "the loss must run in train mode"


def test_trades_beta_is_applied_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn(seed=18)
    torch.manual_seed(19)
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    x_adv = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
    ce_ = F.cross_entropy(clean, y, reduction="none")
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="none").sum(1)
    assert float(kl.mean()) > 1e-2
    for beta in (0.0, 1.0, 6.0):
        obj = TRADES(eps=0.1, alpha=0.02, steps=2, beta=beta)
        monkeypatch.setattr(obj, "attack", _fixed_attack(x_adv))
        out = obj(model, x, y)
        torch.testing.assert_close(out.per_example, ce_ + beta * kl, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.loss, (ce_ + beta * kl).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_fast_at_x_adv_in_ball(norm: str, eps: float) -> None:
    model = cnn().train()
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    obj = FastAT(eps=eps, norm=norm)
    assert obj.alpha == pytest.approx(1.25 * eps)
    out = obj(model, x, y)
    assert_in_ball(out.x_adv, x, eps, norm)
    assert float((out.x_adv - x).abs().max()) > 0.5 * (eps if norm == "linf" else eps / 8)
    assert model.training


def _brute_force_head_grads(model: ImageClassifier, obj, x: Tensor, y: Tensor, x_adv: Tensor) -> Tensor:
    """One example at a time: autograd of the objective's loss w.r.t. head.bias and head.weight."""
    rows = []
    for i in range(x.shape[0]):
        pts = obj.points(x[i:i + 1], x_adv[i:i + 1])
        loss = obj.loss_from_logits([model(p) for p in pts], y[i:i + 1]).sum()
        gw, gb = torch.autograd.grad(loss, [model.head.weight, model.head.bias])
        rows.append(torch.cat([gb, gw.flatten()]))
    return torch.stack(rows)


@pytest.mark.parametrize("make", [Standard, lambda: PGDAT(0.05, 0.02, 3), lambda: FastAT(0.05),
                                  lambda: TRADES(0.05, 0.02, 3, beta=6.0)])
def test_last_layer_grads_equal_per_example_autograd(make, monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn(seed=20)
    torch.manual_seed(21)
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    obj = make()
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1) if not isinstance(obj, Standard) else x
    if not isinstance(obj, Standard):
        monkeypatch.setattr(obj, "attack", _fixed_attack(x_adv))
    got = last_layer_grads(model, obj, x, y)
    want = _brute_force_head_grads(model, obj, x, y, x_adv)
    c, f = model.num_classes, model.feature_dim
    assert got.shape == (6, c + c * f)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last_layer_grads(model, obj, x, y, features="logits"), want[:, :c],
                               rtol=1e-5, atol=1e-6)


def test_nfgsm_is_noise_2_eps_plus_a_signed_eps_step_without_projection() -> None:
    """Binary linear model, interior pixels: x_adv = x + u + eps * sign(dCE/dx) with u ~ U[-2 eps, 2 eps]
    exactly, so perturbations reach beyond eps (no projection back to the ball) but never 3 eps."""
    model = linear_model(2)
    eps = 0.05
    torch.manual_seed(6)
    x = 0.3 + 0.4 * torch.rand(256, *SHAPE, dtype=torch.float64)
    y = torch.randint(0, 2, (256,))
    w = model.head.weight.detach()
    ascent = -(w[y] - w[1 - y]).sign().view_as(x)  # sign of dCE/dx for a binary linear model
    torch.manual_seed(7)
    x_adv = nfgsm(model, x, y, eps=eps)
    torch.manual_seed(7)
    noise = torch.empty_like(x).uniform_(-2 * eps, 2 * eps)  # the draw nfgsm makes
    torch.testing.assert_close(x_adv, x + noise + eps * ascent, atol=1e-12, rtol=0)
    linf, _ = distances(x_adv, x)
    assert float(linf.max()) <= 3 * eps + 1e-12 and float(linf.min()) > eps  # unprojected, bounded
    obj = NFGSM(eps)
    assert (obj.noise, obj.alpha) == (2 * eps, eps)


def test_nfgsm_stays_in_the_pixel_box_and_trains_in_train_mode() -> None:
    model = cnn().train()
    x = torch.rand(16, 1, 8, 8)
    x[:, :, :2] = 0.0  # pixels at the box's edge
    y = torch.randint(0, 10, (16,))
    out = NFGSM(0.1)(model, x, y)
    assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
    assert float((out.x_adv - x).abs().max()) > 0.1  # beyond the eps-ball: nothing projected it back
    assert model.training
