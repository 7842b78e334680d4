"""PAT: LPIPS distances, perceptual attacks (PPGD, LPA, Fast-LPA), the PAT objective, AlexNet loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advcoreset.attacks.lpips import LPIPS, AlexNetFeatures, SelfLPIPS, alexnet_lpips
from advcoreset.attacks.perceptual import (
    fast_lpa,
    lpa,
    margin_loss,
    perceptual_accuracy,
    ppgd,
    project_lpips,
)
from advcoreset.config import ObjectiveConfig
from advcoreset.models import create_model
from advcoreset.models.base import ImageClassifier
from advcoreset.objectives import OBJECTIVES, build_objective, threat_model
from advcoreset.objectives.pat import PAT, build
from advcoreset.selection.gradients import last_layer_grads

BOUND = 0.3  # self-bound LPIPS of this tiny digits CNN: l_inf-0.1 PGD perturbations measure ~0.2


def _tiny_cnn(seed: int = 0, width: int = 8, hidden: int = 32) -> ImageClassifier:
    torch.manual_seed(seed)
    return create_model("small_cnn", in_channels=1, num_classes=10, input_size=8, width=width, hidden=hidden)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return x, torch.tensor(d.target, dtype=torch.long)


@pytest.fixture(scope="module")
def trained(digits: tuple[torch.Tensor, torch.Tensor]) -> ImageClassifier:
    """A small CNN trained on 1,500 digits for a few seconds (93% clean accuracy on the next 120)."""
    x, y = digits[0][:1500], digits[1][:1500]
    model = _tiny_cnn(width=16, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 100):
            idx = perm[i:i + 100]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture()
def held_out(digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return digits[0][1500:1620], digits[1][1500:1620]


# --------------------------------------------------------------------------------------------- LPIPS
def test_lpips_matches_brute_force_definition() -> None:
    """d^2 = sum_l mean_{h,w} ||g1/|g1| - g2/|g2|||^2, computed pixel by pixel."""
    torch.manual_seed(0)

    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        return [x * 2 + 1, F.avg_pool2d(x, 2) ** 2 + 0.1]

    x1, x2 = torch.rand(3, 4, 4, 6), torch.rand(3, 4, 4, 6)
    got = LPIPS(feats)(x1, x2)
    want = torch.zeros(3, dtype=torch.float64)
    for g1, g2 in zip(feats(x1.double()), feats(x2.double()), strict=True):
        _, _, h, w = g1.shape
        for b in range(3):
            acc = 0.0
            for i in range(h):
                for j in range(w):
                    u, v = g1[b, :, i, j], g2[b, :, i, j]
                    acc += float(((u / u.norm() - v / v.norm()) ** 2).sum())
            want[b] += acc / (h * w)
    torch.testing.assert_close(got.double(), want.sqrt(), rtol=1e-5, atol=1e-6)


def test_lpips_zero_symmetric_nonnegative_and_differentiable_at_zero() -> None:
    model = _tiny_cnn()
    d = SelfLPIPS(model)
    x = torch.rand(6, 1, 8, 8)
    x2 = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.equal(d(x, x), torch.zeros(6))
    torch.testing.assert_close(d(x, x2), d(x2, x), rtol=1e-5, atol=1e-6)
    assert (d(x, x2) > 0).all()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(x, xr).sum(), xr)
    assert torch.isfinite(g).all()


def test_lpips_grows_with_perturbation_size() -> None:
    model = _tiny_cnn()
    d = SelfLPIPS(model)
    torch.manual_seed(1)
    x = 0.25 + 0.5 * torch.rand(16, 1, 8, 8)
    delta = torch.empty_like(x).uniform_(-0.25, 0.25)  # never clipped: x + t delta stays in [0, 1]
    ts = torch.linspace(0.1, 1.0, 10)
    dists = torch.stack([d(x, x + t * delta) for t in ts])  # (10, 16)
    assert (dists.mean(1).diff() > 0).all()
    assert (dists[-1] > dists[0]).all()


def test_self_lpips_borrows_model_in_eval_mode() -> None:
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())]
    model = ImageClassifier(stages, nn.AdaptiveAvgPool2d(1), 4, 3, [0.0], [1.0]).train()
    bn = stages[0][1]
    before = bn.running_mean.clone()
    d = SelfLPIPS(model)
    x = torch.rand(5, 1, 6, 6)
    out = d(x, x.flip(0))
    assert torch.equal(bn.running_mean, before)  # no statistics update: features in eval mode
    assert model.training  # mode restored
    assert list(d.parameters()) == []  # the model is borrowed, not owned
    # eval-mode features are per-example: the distance of a pair does not depend on the rest of the batch
    torch.testing.assert_close(d(x[:2], x.flip(0)[:2]), out[:2])
    with pytest.raises(TypeError, match="feature_maps"):
        SelfLPIPS(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ attacks
def test_margin_loss_known_values() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    y = torch.tensor([1, 1])
    torch.testing.assert_close(margin_loss(logits, y), torch.tensor([-1.0, 6.0]))
    torch.testing.assert_close(margin_loss(logits, y, kappa=1.0), torch.tensor([-1.0, 1.0]))


def test_project_lpips_feasible_and_identity_inside(trained: ImageClassifier, held_out) -> None:
    x = held_out[0][:40]
    d = SelfLPIPS(trained)
    torch.manual_seed(0)
    far = (x + torch.randn_like(x)).clamp(0, 1)
    near = (x + 0.003 * torch.randn_like(x)).clamp(0, 1)
    assert (d(x, far) > BOUND).all() and (d(x, near) < BOUND).all()
    p = project_lpips(d, x, far, BOUND)
    dp = d(x, p)
    assert (dp <= BOUND).all() and p.min() >= 0 and p.max() <= 1
    assert dp.mean() > 0.5 * BOUND  # a projection, not a collapse onto x
    assert torch.equal(project_lpips(d, x, near, BOUND), near)
    # no Newton steps: the bisection alone still guarantees feasibility
    assert (d(x, project_lpips(d, x, far, BOUND, newton_steps=0)) <= BOUND).all()


@pytest.mark.parametrize("attack", [ppgd, lpa])
def test_evaluation_attacks_end_within_bound_and_lower_accuracy(attack, trained: ImageClassifier,
                                                                held_out) -> None:
    x, y = held_out
    d = SelfLPIPS(trained)
    torch.manual_seed(0)
    kw = {"search_steps": 3} if attack is lpa else {}
    x_adv = attack(trained, x, y, d, bound=BOUND, steps=8, **kw)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (d(x, x_adv) <= BOUND + 1e-6).all()
    with torch.no_grad():
        clean = (trained(x).argmax(1) == y).float().mean().item()
        adv = (trained(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9
    assert adv < clean - 0.3
    assert all(p.grad is None for p in trained.parameters())


def test_perceptual_accuracy_counts_and_orders_bounds(trained: ImageClassifier, held_out) -> None:
    x, y = held_out
    torch.manual_seed(0)
    small = perceptual_accuracy(trained, x, y, attack="ppgd", bound=0.1, steps=5, batch_size=50)
    torch.manual_seed(0)
    large = perceptual_accuracy(trained, x, y, attack="lpa", bound=BOUND, steps=5, search_steps=2,
                                batch_size=50)
    with torch.no_grad():
        clean = (trained(x).argmax(1) == y).float().mean().item()
    assert 0 <= large < small <= clean
    assert not trained.training
    with pytest.raises(ValueError, match="attack must be one of"):
        perceptual_accuracy(trained, x, y, attack="pgd", bound=BOUND)


def test_fast_lpa_attacks_softly_and_leaves_model_alone(trained: ImageClassifier, held_out) -> None:
    x, y = held_out
    d = SelfLPIPS(trained)
    trained.train()
    try:
        torch.manual_seed(0)
        x_adv = fast_lpa(trained, x, y, d, bound=BOUND, steps=6)
        assert trained.training  # fast_lpa does not touch the mode
    finally:
        trained.eval()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in trained.parameters())
    dist = d(x, x_adv)
    assert dist.mean() < 2.5 * BOUND  # soft bound: the penalty keeps it in the neighbourhood
    with torch.no_grad():
        clean = (trained(x).argmax(1) == y).float().mean().item()
        adv = (trained(x_adv).argmax(1) == y).float().mean().item()
    assert adv < clean - 0.3
    assert torch.equal(fast_lpa(trained, x, y, d, bound=BOUND, steps=0), x)
    # a stiffer penalty keeps the points closer
    torch.manual_seed(0)
    stiff = d(x, fast_lpa(trained, x, y, d, bound=BOUND, steps=6, lambda_init=100.0))
    assert stiff.mean() < dist.mean()


# ---------------------------------------------------------------------------------------- objective
def test_pat_objective_trains_end_to_end(digits) -> None:
    x, y = digits[0][:64], digits[1][:64]
    model = _tiny_cnn(1).train()
    objective = build_objective(ObjectiveConfig(name="pat"), steps=3)
    assert isinstance(objective, PAT) and objective.steps == 3
    assert list(objective.parameters()) == []  # self-bound: the objective owns no network
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    weights = torch.rand(64) + 0.5
    for _ in range(3):
        out = objective(model, x, y, weights)
        assert torch.isfinite(out.loss) and out.per_example.shape == (64,)
        assert out.x_adv.shape == x.shape and not torch.equal(out.x_adv, x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert model.training  # the attack ran in eval mode and restored training mode
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_last_layer_grads_for_pat_match_autograd(trained: ImageClassifier, held_out) -> None:
    x, y = held_out[0][:12], held_out[1][:12]
    objective = PAT(BOUND, steps=3)
    torch.manual_seed(0)
    g = last_layer_grads(trained, objective, x, y)
    c, f = trained.num_classes, trained.feature_dim
    assert g.shape == (12, c + c * f) and torch.isfinite(g).all()
    torch.manual_seed(0)
    x_adv = objective.attack(trained, x, y)  # same random start -> same adversarial points
    for i in range(12):
        loss = F.cross_entropy(trained(x_adv[i:i + 1]), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [trained.head.weight, trained.head.bias])
        torch.testing.assert_close(g[i], torch.cat([gb, gw.flatten()]), rtol=1e-4, atol=1e-5)


def test_build_overrides_steps_and_rejects_bad_bound() -> None:
    cfg = ObjectiveConfig(name="pat")
    cfg.pat.steps, cfg.pat.bound, cfg.pat.lambda_init = 7, 0.3, 2.0
    assert build(cfg).steps == 7 and build(cfg, steps=2).steps == 2
    assert build(cfg).bound == 0.3 and build(cfg).lambda_init == 2.0
    with pytest.raises(ValueError, match="bound"):
        PAT(0.0, 3)


# ------------------------------------------------------------------------------------------ AlexNet
def _alexnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = AlexNetFeatures()
    state = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("features.")}
    state["classifier.1.weight"] = torch.randn(4, 4)  # ignored, as in a full torchvision checkpoint
    return state


def test_alexnet_lpips_loads_safetensors_and_torch_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _alexnet_state()
    path = tmp_path / "alexnet.safetensors"
    save_file(state, str(path))
    d = alexnet_lpips(path)
    assert not d.training and all(not p.requires_grad for p in d.parameters())
    torch.testing.assert_close(d.features.features[3].weight, state["features.3.weight"])
    torch.manual_seed(0)
    grey = torch.rand(4, 1, 28, 28)  # 1 channel, smaller than 32: repeated and resized
    maps = d.features(grey)
    assert [m.shape[1] for m in maps] == [64, 192, 384, 256, 256]
    dist = d(grey, (grey + 0.1 * torch.randn_like(grey)).clamp(0, 1))
    assert dist.shape == (4,) and (dist > 0).all() and torch.isfinite(dist).all()
    assert torch.equal(d(grey, grey), torch.zeros(4))
    rgb = grey.expand(-1, 3, -1, -1)
    torch.testing.assert_close(d(grey, grey.flip(0)), d(rgb, rgb.flip(0)))
    # torch.save'd state dict, read with weights_only=True, with a DataParallel prefix
    pt = tmp_path / "alexnet.pt"
    torch.save({"module." + k: v for k, v in state.items()}, pt)
    torch.testing.assert_close(alexnet_lpips(pt)(grey, grey.flip(0)), d(grey, grey.flip(0)))
    # PAT uses it when the config names a path
    cfg = ObjectiveConfig(name="pat")
    cfg.pat.lpips = str(path)
    objective = build(cfg, steps=1)
    assert objective.lpips is not None and not isinstance(objective.lpips, SelfLPIPS)


def test_alexnet_lpips_rejects_bad_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="does not exist"):
        alexnet_lpips(tmp_path / "nope.safetensors")
    state = _alexnet_state()
    wrong = {k.replace("features.", "conv."): v for k, v in state.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['features.0.bias'"):
        alexnet_lpips(tmp_path / "wrong.safetensors")
    state["features.6.weight"] = torch.zeros(384, 192, 5, 5)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="features.6.weight"):
        alexnet_lpips(tmp_path / "shape.safetensors")


def test_pat_with_fixed_lpips_attacks_within_neighbourhood(trained: ImageClassifier, held_out) -> None:
    """A non-self distance goes through the two-pass path (logits and phi from different networks)."""
    x, y = held_out[0][:30], held_out[1][:30]
    torch.manual_seed(0)
    other = LPIPS(_tiny_cnn(5).eval().feature_maps)
    x_adv = lpa(trained, x, y, other, bound=BOUND, steps=5, search_steps=2)
    assert (other(x, x_adv) <= BOUND + 1e-6).all()
    assert math.isfinite(float(x_adv.sum()))


def test_perceptual_evaluation_rejects_an_attack_that_leaves_its_ball(trained: ImageClassifier, held_out,
                                                                      monkeypatch) -> None:
    """An attack stepping outside the LPIPS bound must stop the evaluation, not report a low accuracy."""
    from advcoreset.attacks import perceptual

    def too_far(model, x, y, dist, *, bound, steps, **kw):
        return (1 - x).clamp(0, 1)  # the photographic negative: far outside any small LPIPS ball

    monkeypatch.setitem(perceptual.ATTACKS, "ppgd", too_far)
    x, y = held_out
    with pytest.raises(RuntimeError, match="outside the LPIPS ball"):
        perceptual.perceptual_accuracy(trained, x[:16], y[:16], attack="ppgd", bound=0.05, steps=1)


def test_threat_model_comes_from_the_objective_registration() -> None:
    """PAT says it adds a perceptual threat; l_p objectives add nothing; evaluation and export read this,
    not the objective's name."""
    cfg = ObjectiveConfig(name="pat")
    cfg.pat.bound = 0.3
    assert threat_model(cfg) == {"objective": "pat", "norm": cfg.attack.norm, "eps": cfg.attack.eps,
                                 "perceptual_bound": 0.3, "lpips": "self"}
    for name in ("pgd", "trades", "fast", "nfgsm", "standard"):
        assert "perceptual_bound" not in threat_model(ObjectiveConfig(name=name))
    with pytest.raises(KeyError, match="unknown objective"):
        OBJECTIVES.about("nope")
