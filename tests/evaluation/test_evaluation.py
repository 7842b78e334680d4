"""Robust evaluation: clean / PGD / AutoAttack accuracy against known answers (functions whose predictions
are known, linear models whose exact robust accuracy has a closed form), budgets reported, guards."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import Tensor, nn

import advcoreset.evaluation.robust as robust_mod
from advcoreset.attacks import pgd as real_pgd
from advcoreset.evaluation import (
    STANDARD_BUDGETS,
    AutoAttackBudgets,
    accuracy,
    autoattack_accuracy,
    check_perturbation,
    evaluate,
    pgd_accuracy,
)
from advcoreset.models.base import ImageClassifier
from advcoreset.models.cnn import small_cnn

SIDE = 10  # 10x10: torchattacks' Square l_2 start tiles it cleanly
TINY = AutoAttackBudgets(apgd_steps=10, apgdt_steps=10, target_classes=9, fab_steps=10, square_queries=50)


class FirstRowArgmax(nn.Module):
    """Predicts argmax of the first pixel row (C classes <= width); garbage in train mode, so any
    evaluation that forgets eval mode gets a different answer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.scale * x[:, 0, 0, : self.num_classes]
        return -logits if self.training else logits


def linear_model(num_classes: int = 10, seed: int = 0) -> ImageClassifier:
    """logits = W flatten(x) + b as an ImageClassifier (no stages, identity normalisation)."""
    torch.manual_seed(seed)
    model = ImageClassifier([], nn.Flatten(), SIDE * SIDE, num_classes, [0.0], [1.0])
    nn.init.normal_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model.eval()


def robust_radius(model: ImageClassifier, x: Tensor, y: Tensor, norm: str) -> Tensor:
    """Exact minimal perturbation that changes a linear model's prediction (box constraint inactive):
    min_k (z_y - z_k) / ||w_y - w_k||_dual; negative for misclassified points."""
    w = model.head.weight.detach().double()
    with torch.no_grad():
        z = model(x).double()
    gaps = z.gather(1, y[:, None]) - z  # (B, C)
    diff = w[y][:, None, :] - w[None, :, :]  # (B, C, D)
    dual = diff.abs().sum(2) if norm == "linf" else diff.norm(dim=2)
    r = gaps / dual.clamp_min(1e-12)
    r[torch.arange(len(y)), y] = float("inf")
    return r.min(1).values


def designed_set(model: ImageClassifier, norm: str, eps: float, n_weak: int = 6, n_strong: int = 6,
                 n_wrong: int = 2) -> tuple[Tensor, Tensor, float]:
    """Points in [0.3, 0.7] (the [0, 1] box never binds) that are either easy to break (radius < 0.3 eps)
    or provably robust (radius > 2 eps), plus misclassified ones. Returns x, y and the exact robust acc."""
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(3000, 1, SIDE, SIDE, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    r = robust_radius(model, x, y, norm)
    weak = (r < 0.3 * eps).nonzero().flatten()[:n_weak]
    strong = (r > 2 * eps).nonzero().flatten()[:n_strong]
    wrong = (r > 2 * eps).nonzero().flatten()[n_strong:n_strong + n_wrong]
    assert len(weak) == n_weak and len(strong) == n_strong and len(wrong) == n_wrong
    idx = torch.cat([weak, strong, wrong])
    labels = y[idx].clone()
    labels[-n_wrong:] = (labels[-n_wrong:] + 1) % model.num_classes
    return x[idx], labels, n_strong / len(idx)


# ------------------------------------------------------------------------------------------------ clean


def test_accuracy_of_a_known_function_uint8_and_float() -> None:
    model = FirstRowArgmax(5).train()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 5, 5), dtype=torch.uint8, generator=g)
    pred = (images[:, 0, 0, :5].float()).argmax(1)
    labels = pred.clone()
    labels[23:] = (labels[23:] + 1) % 5
    for imgs in (images, images.float() / 255):
        assert accuracy(model, imgs, labels, batch_size=10) == pytest.approx(23 / 37)
    assert model.training, "the caller's mode must be restored"
    assert model.scale.grad is None


def test_float_images_outside_unit_range_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        accuracy(FirstRowArgmax(3), torch.full((2, 1, 3, 3), 255.0), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.1)])
def test_pgd_accuracy_equals_exact_robust_accuracy_of_linear_model(norm: str, eps: float) -> None:
    model = linear_model()
    x, y, exact = designed_set(model, norm, eps)
    alpha = eps / 4 if norm == "linf" else eps / 2
    assert accuracy(model, x, y) == pytest.approx(12 / 14)
    assert pgd_accuracy(model, x, y, eps=eps, alpha=alpha, steps=20, norm=norm, batch_size=5) == \
        pytest.approx(exact)


def test_pgd_accuracy_below_clean_and_equal_at_eps_zero() -> None:
    torch.manual_seed(2)
    model = small_cnn(1, 10, SIDE, [0.5], [0.25], width=4, hidden=16)
    with torch.no_grad():
        model.head.weight.mul_(8)
    x = torch.rand(32, 1, SIDE, SIDE)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    model.train()
    clean = accuracy(model, x, y)
    assert clean == pytest.approx(28 / 32)
    robust = pgd_accuracy(model, x, y, eps=0.1, alpha=0.025, steps=10, restarts=2)
    assert robust < clean
    assert pgd_accuracy(model, x, y, eps=0.0, alpha=0.01, steps=10) == pytest.approx(clean)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_robust_only_if_correct_under_every_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stub attack that only works on the second restart: the point must still count as broken, and
    later restarts must only see the points still standing."""
    model = linear_model()
    x, y, exact = designed_set(model, "linf", 0.01)
    seen: list[int] = []

    def second_restart_only(model: nn.Module, x: Tensor, y: Tensor, **kw: object) -> Tensor:
        seen.append(x.shape[0])
        return real_pgd(model, x, y, **kw) if len(seen) == 2 else x

    monkeypatch.setattr(robust_mod, "pgd", second_restart_only)
    acc = pgd_accuracy(model, x, y, eps=0.01, alpha=0.0025, steps=20, restarts=3)
    assert acc == pytest.approx(exact)
    assert seen == [12, 12, 6]  # clean-correct points, then only the 6 that survived restart 2
    seen.clear()
    assert pgd_accuracy(model, x, y, eps=0.01, alpha=0.0025, steps=20, restarts=1) == pytest.approx(12 / 14)


def test_pgd_guard_rejects_an_attack_that_leaves_the_ball(monkeypatch: pytest.MonkeyPatch) -> None:
    model = linear_model()
    x, y, _ = designed_set(model, "linf", 0.01)
    monkeypatch.setattr(robust_mod, "pgd", lambda model, x, y, eps, **kw: (x + 2 * eps).clamp(0, 1))
    with pytest.raises(RuntimeError, match="outside the linf ball"):
        pgd_accuracy(model, x, y, eps=0.01, alpha=0.0025, steps=5)


def test_check_perturbation_tolerance_and_box() -> None:
    x = torch.full((2, 1, 3, 3), 0.5)
    d = torch.randn_like(x)
    d = 0.2 * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    check_perturbation(x + d, x, eps=0.2, norm="l2", attack="t")
    with pytest.raises(RuntimeError, match="outside the l2 ball"):
        check_perturbation(x + 1.001 * d, x, eps=0.2, norm="l2", attack="t")
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        check_perturbation(x + 0.6, x, eps=1.0, norm="linf", attack="t")
    with pytest.raises(RuntimeError, match="non-finite"):
        check_perturbation(x * float("nan"), x, eps=1.0, norm="linf", attack="t")


# ------------------------------------------------------------------------------------------ AutoAttack


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.1)])
def test_autoattack_fast_matches_exact_robust_accuracy_of_linear_model(norm: str, eps: float) -> None:
    model = linear_model()
    x, y, exact = designed_set(model, norm, eps)
    res = autoattack_accuracy(model, x, y, norm=norm, eps=eps, version="fast", budgets=TINY, batch_size=8)
    assert res["autoattack_acc"] == pytest.approx(exact)
    aa = res["autoattack"]
    assert aa["version"] == "fast" and not aa["comparable_to_robustbench"] and "fast" in aa["note"]
    assert [a["name"] for a in aa["attacks"]] == ["apgd-ce", "apgd-t"]
    assert aa["clean_acc"] == pytest.approx(12 / 14)


def test_autoattack_on_small_cnn_is_no_weaker_than_pgd_and_reports_budgets() -> None:
    torch.manual_seed(3)
    model = small_cnn(1, 10, SIDE, [0.5], [0.25], width=4, hidden=16)
    with torch.no_grad():
        model.head.weight.mul_(8)
    x = torch.rand(16, 1, SIDE, SIDE)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    model.train()
    kw = {"norm": "linf", "eps": 0.03, "pgd_steps": 10, "pgd_alpha": None, "pgd_restarts": 1, "batch_size": 8}
    torch.manual_seed(4)
    without = evaluate(model, x, y, **kw)
    rng = torch.get_rng_state()
    torch.manual_seed(4)
    res = evaluate(model, x, y, autoattack=True, aa_version="fast", aa_budgets=TINY, **kw)
    json.dumps(res)  # JSON-serialisable
    assert torch.equal(torch.get_rng_state(), rng), "torchattacks' seeding must not leak to the caller"
    timed = ("seconds",)  # wall-clock seconds differ between the two calls
    assert {k: v for k, v in without.items() if k not in timed}.items() <= res.items()
    assert set(res["seconds"]) == {"clean", "pgd", "autoattack"} and set(without["seconds"]) == {"clean", "pgd"}
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert res["clean_acc"] == pytest.approx(14 / 16)
    assert res["pgd"] == {"steps": 10, "alpha": pytest.approx(0.0075), "restarts": 1, "random_start": True,
                          "loss": "ce", "alpha_rule": "2.5 eps / steps"}
    assert 0 < res["pgd10_acc"] < res["clean_acc"]
    assert res["autoattack_acc"] <= res["pgd10_acc"] + 1 / 16
    attacks = res["autoattack"]["attacks"]
    assert [(a["name"], a["iterations"], a["restarts"]) for a in attacks] == [("apgd-ce", 10, 1),
                                                                              ("apgd-t", 10, 1)]
    assert attacks[1]["target_classes"] == 9
    after = [res["autoattack"]["clean_acc"]] + [a["robust_after"] for a in attacks]
    assert after == sorted(after, reverse=True) and after[-1] == res["autoattack_acc"]


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.1)])
def test_autoattack_standard_runs_all_four_attacks_on_cpu(norm: str, eps: float) -> None:
    model = linear_model()
    x, y, exact = designed_set(model, norm, eps, n_weak=2, n_strong=2, n_wrong=1)
    res = autoattack_accuracy(model, x, y, norm=norm, eps=eps, version="standard", budgets=TINY)
    aa = res["autoattack"]
    assert res["autoattack_acc"] == pytest.approx(exact)
    assert [a["name"] for a in aa["attacks"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["attacks"][2]["iterations"] == 10 and aa["attacks"][3]["queries"] == 50
    assert not aa["standard_budgets"] and not aa["comparable_to_robustbench"]
    assert all(p.grad is None for p in model.parameters()), "FAB's backward must not touch .grad"


@pytest.mark.slow
def test_autoattack_full_standard_budgets_on_cpu() -> None:
    """The real thing (100 iterations, 9 targets, 5,000 queries) on 4 points of a linear model (~6 s)."""
    model = linear_model()
    x, y, exact = designed_set(model, "linf", 0.01, n_weak=1, n_strong=2, n_wrong=1)
    res = autoattack_accuracy(model, x, y, norm="linf", eps=0.01)
    aa = res["autoattack"]
    assert res["autoattack_acc"] == pytest.approx(exact)
    assert aa["version"] == "standard" and aa["standard_budgets"] and aa["comparable_to_robustbench"]
    assert [(a["name"], a.get("iterations", a.get("queries"))) for a in aa["attacks"]] == [
        ("apgd-ce", 100), ("apgd-t", 100), ("fab-t", 100), ("square", 5000)]
    assert [a.get("target_classes") for a in aa["attacks"]] == [None, 9, 9, None]


def test_standard_budgets_are_robustbench_standard() -> None:
    assert STANDARD_BUDGETS == AutoAttackBudgets(apgd_steps=100, apgdt_steps=100, target_classes=9,
                                                 fab_steps=100, square_queries=5000)


def test_autoattack_eps_guard_triggers_on_a_broken_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchattacks

    model = linear_model().train()
    x, y, _ = designed_set(model.eval(), "linf", 0.01)
    model.train()
    broken = lambda self, images, labels: (images + 0.02).clamp(0, 1)  # noqa: E731
    monkeypatch.setattr(torchattacks.APGD, "forward", broken)
    with pytest.raises(RuntimeError, match="apgd-ce.*outside the linf ball"):
        autoattack_accuracy(model, x, y, norm="linf", eps=0.01, version="fast", budgets=TINY)
    assert model.training and all(p.requires_grad for p in model.parameters())
    monkeypatch.setattr(torchattacks.APGD, "forward", lambda self, images, labels: images + 0.005)
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        autoattack_accuracy(model, torch.ones_like(x), y, norm="linf", eps=0.01, version="fast", budgets=TINY)


def test_missing_torchattacks_raises_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ImportError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        autoattack_accuracy(linear_model(), torch.rand(2, 1, SIDE, SIDE), torch.zeros(2, dtype=torch.long),
                            norm="linf", eps=0.01)


def test_autoattack_rejects_too_few_classes() -> None:
    model = linear_model(num_classes=3)
    with pytest.raises(ValueError, match="at least 4 classes"):
        autoattack_accuracy(model, torch.rand(2, 1, SIDE, SIDE), torch.zeros(2, dtype=torch.long),
                            norm="linf", eps=0.01)


def test_the_default_pgd_step_scales_with_the_steps_and_is_labelled() -> None:
    """2.5 eps / steps (a fixed eps / 10 let a 5-step attack travel half the ball: an over-optimistic number),
    recorded as the rule; an explicit step wins and is labelled as given."""
    from advcoreset.evaluation import default_pgd_alpha

    assert default_pgd_alpha(0.1, "linf", 5) == pytest.approx(0.05)
    assert default_pgd_alpha(0.1, "linf", 20) == pytest.approx(0.0125)
    assert default_pgd_alpha(1.0, "l2", 10) == pytest.approx(0.25)
    torch.manual_seed(0)
    model = small_cnn(1, 10, SIDE, [0.5], [0.25], width=4, hidden=16).eval()
    x, y = torch.rand(8, 1, SIDE, SIDE), torch.randint(0, 10, (8,))
    res = evaluate(model, x, y, norm="linf", eps=0.1, pgd_steps=5, pgd_alpha=None)
    assert res["pgd"]["alpha"] == pytest.approx(0.05) and res["pgd"]["alpha_rule"] == "2.5 eps / steps"
    given = evaluate(model, x, y, norm="linf", eps=0.1, pgd_steps=5, pgd_alpha=0.01)
    assert given["pgd"]["alpha"] == 0.01 and given["pgd"]["alpha_rule"] == "given"
