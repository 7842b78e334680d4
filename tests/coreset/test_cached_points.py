"""Selection at cached perturbations (``selection.points: cached``): the built-in augmentation is recorded and
undone exactly, the cache returns what the training attack found, a round takes its gradients there (attacking
only the examples it does not know), and a run with it resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_helpers import resumed_run_matches, tiny_config
from torch import nn

from advcoreset.config import Config, ConfigError
from advcoreset.coreset import CoresetLoader
from advcoreset.coreset.cache import PerturbationCache
from advcoreset.coreset.select import selection_gradients
from advcoreset.data.loader import Batch, augment_batch, random_crop_flip
from advcoreset.data.sources import TensorSource
from advcoreset.objectives.lp import PGDAT
from advcoreset.selection import last_layer_grads_at
from advcoreset.training import Trainer, TrainingError


def tiny(tmp_path: Path, *overrides: str) -> Config:
    """A seconds-long digits run with the built-in crop (so the cache undoes an augmentation)."""
    return tiny_config(tmp_path, "data.augment=crop_flip", "data.crop_padding=1", *overrides)


def _reference_augment(x: torch.Tensor, p: int, off: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
    """One image at a time: zero-pad, slice at the offsets, mirror where flipped."""
    out = []
    for i in range(x.shape[0]):
        xi = nn.functional.pad(x[i], (p, p, p, p))
        if off is not None:
            r, c = int(off[0, i]), int(off[1, i])
            xi = xi[:, r:r + x.shape[2], c:c + x.shape[3]]
        else:
            xi = x[i]
        if flips is not None and bool(flips[i]):
            xi = xi.flip(2)
        out.append(xi)
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 5), c=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9), p=st.integers(0, 3),
       flip=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_augmentation_is_recorded_and_undone_where_the_crop_kept_the_pixel(b, c, h, w, p, flip, seed):
    x = torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    xa, aug = augment_batch(x, p, flip, g1)
    assert torch.equal(xa, random_crop_flip(x, p, flip, g2))  # the same draws as before the record existed
    assert torch.equal(xa, _reference_augment(x, p, aug.offsets, aug.flips))
    kept = aug.undo(augment_batch(torch.ones_like(x), p, flip, torch.Generator().manual_seed(seed))[0])
    back = aug.undo(xa)
    assert torch.equal(back, x * kept)  # exact where kept, 0 where the crop cut the pixel off
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    if p == 0:
        assert bool((kept == 1).all())


def _batch(x, idx, aug=None):
    return Batch(x, torch.zeros(x.shape[0], dtype=torch.long), torch.ones(x.shape[0]), idx, None, aug)


def test_the_cache_gives_back_the_training_perturbation_in_the_images_frame():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    xa, aug = augment_batch(x, 2, True, g)
    delta = (torch.rand(xa.shape, generator=g) - 0.5) * 0.2
    cache = PerturbationCache(10)
    idx = torch.tensor([7, 1, 3, 0, 9, 4])
    cache.remember(_batch(xa, idx, aug), xa + delta)
    assert cache.known.tolist() == [i in idx.tolist() for i in range(10)]
    want = (x + aug.undo(delta)).clamp(0, 1)
    got = cache.points(idx, x)
    assert torch.allclose(got, want, atol=1e-3)  # float16 storage
    # unknown examples come back clean, and a new tensor every time
    other = torch.rand(2, 1, 8, 8)
    out = cache.points(torch.tensor([2, 5]), other)
    assert torch.equal(out, other) and out is not other


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def test_a_round_takes_gradients_at_the_cached_points_and_attacks_only_the_unknown():
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(20, 1, 4, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    model, obj = _model(), PGDAT(eps=0.1, alpha=0.05, steps=2, norm="linf", random_start=False)
    cache = PerturbationCache(20)
    known = torch.tensor([i for i in range(20) if i % 3])
    delta = (torch.rand(known.numel(), 1, 4, 4, generator=g) - 0.5) * 0.2
    cache.remember(_batch(images[known], known), images[known] + delta)
    attacked: list[int] = []
    attack = obj.attack
    obj.attack = lambda m, x, y: attacked.append(x.shape[0]) or attack(m, x, y)  # type: ignore[method-assign]
    got = selection_gradients(model, obj, TensorSource(images, labels), 8, cache=cache)
    assert sum(attacked) == 20 - known.numel()  # only the examples the cache does not know
    x_adv = cache.points(torch.arange(20), images)
    fresh = ~cache.known
    x_adv[fresh] = attack(model, images[fresh], labels[fresh])
    want = last_layer_grads_at(model, obj, images, x_adv, labels)
    assert torch.allclose(got, want, atol=1e-6)


def test_a_loop_of_ones_own_feeds_the_loader_and_the_round_reads_it():
    g = torch.Generator().manual_seed(2)
    images, labels = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 3
    model = _model()
    loader = CoresetLoader(TensorSource(images, labels), model, "pgd", method="gradmatch", fraction=0.5,
                           warm_epochs=1, interval=1, batch_size=16, points="cached",
                           objective_options={"eps": 0.1})
    obj = PGDAT(eps=0.1, alpha=0.05, steps=2, norm="linf", random_start=False)
    seen = torch.zeros(40, 1, 4, 4)
    for batch in loader:  # the warm epoch
        x_adv = obj.attack(model, batch.x, batch.y)
        loader.remember(batch, x_adv)
        seen[batch.idx] = x_adv
    assert bool(loader.cache.known.all())
    stats = loader.start_epoch()
    assert stats["points"] == "cached" and stats["cached_share"] == 1.0
    want = last_layer_grads_at(model, loader.objective, images, seen, labels)
    assert torch.allclose(loader.gradients(), want, atol=2e-3)  # x_adv kept in float16


def test_a_run_with_cached_points_resumes_bit_for_bit(tmp_path):
    extra = ["selection.method=gradmatch", "selection.points=cached", "selection.warm_epochs=1",
             "selection.interval=1", "selection.fraction=0.5", "optim.epochs=4"]
    _, recs = resumed_run_matches(tmp_path, 2, "data.augment=crop_flip", "data.crop_padding=1", *extra)
    rounds = [r for r in recs if r["kind"] == "selection" and "points" in r]
    assert [r["cached_share"] for r in rounds] == [1.0, 1.0, 1.0]  # the warm epoch trained every example


def test_cached_points_change_the_coreset_from_attack_points(tmp_path):
    """The option reaches the round: the same run with attack points chooses other coresets."""
    base = ["selection.method=gradmatch", "selection.warm_epochs=1", "selection.interval=1",
            "selection.fraction=0.5", "optim.epochs=2"]
    ta = Trainer(tiny(tmp_path / "a", *base, "selection.points=attack"))
    tc = Trainer(tiny(tmp_path / "c", *base, "selection.points=cached"))
    ta.run()
    tc.run()
    assert tc.loader.cache is not None and ta.loader.cache is None
    assert not torch.equal(ta.loader.selection.weights, tc.loader.selection.weights)


def test_a_damaged_cache_in_the_checkpoint_is_refused_naming_it(tmp_path):
    extra = ["selection.method=gradmatch", "selection.points=cached", "selection.interval=1", "optim.epochs=3"]
    Trainer(tiny(tmp_path, *extra)).run(stop_after=2)
    path = tmp_path / "run" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["perturbations"]["known"] = ckpt["perturbations"]["known"][:-1]
    torch.save(ckpt, path)
    with pytest.raises(TrainingError, match="perturbation cache in .*last.pt"):
        Trainer(tiny(tmp_path, *extra)).run(resume=True)


def test_bad_points_are_refused_by_name():
    with pytest.raises(ConfigError, match="selection.points must be attack or cached, got 'later'"):
        tiny(Path("/tmp"), "selection.points=later")
    images, labels = torch.rand(6, 1, 4, 4), torch.arange(6) % 3
    with pytest.raises(ValueError, match="points must be one of"):
        CoresetLoader(TensorSource(images, labels), _model(), points="both")
    with pytest.raises(ValueError, match="one process"):
        CoresetLoader(TensorSource(images, labels), _model(), points="cached", world=2)
