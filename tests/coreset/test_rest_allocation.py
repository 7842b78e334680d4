"""``selection.rest``: instead of dropping the examples outside the coreset, a coreset epoch trains them too at
a cheaper point (BulletTrain's allocation of the attack): every example once, the members marked and weighted
to a mean of 1 per class, the members at the training attack and the rest at the cheap one."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from tests_helpers import resumed_run_matches, tiny_config
from torch import nn

from advcoreset.config import ConfigError, OptimConfig
from advcoreset.coreset import CoresetLoader
from advcoreset.data.loader import Batch
from advcoreset.data.sources import TensorSource
from advcoreset.objectives.lp import PGDAT, Standard
from advcoreset.training.epoch import EpochContext, _attack


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4))


def _loader(method: str = "gradmatch", **kw) -> CoresetLoader:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 4
    return CoresetLoader(TensorSource(images, labels), _model(), "pgd", method=method, fraction=0.3,
                         warm_epochs=1, interval=1, batch_size=8, **kw)


def test_a_coreset_epoch_trains_everyone_once_and_marks_the_members():
    loader = _loader(rest="clean")
    list(loader)  # the warm epoch: no marks
    batches = list(loader)
    assert loader.phase == "coreset"
    sel, labels = loader.selection, loader.source.labels
    idx = torch.cat([b.idx for b in batches])
    assert torch.equal(idx.sort().values, torch.arange(40))  # everyone, once
    strong = torch.cat([b.strong for b in batches])
    w = torch.cat([b.w for b in batches])
    members = set(sel.indices.tolist())
    assert [bool(s) for s in strong] == [i in members for i in idx.tolist()]
    assert torch.all(w[~strong] == 1)
    by_pos = dict(zip(idx.tolist(), w.tolist(), strict=True))
    for c in range(4):  # members' weights: proportional to the coreset's, averaging 1 in their class
        mine = [i for i in sel.indices.tolist() if int(labels[i]) == c]
        got = torch.tensor([by_pos[i] for i in mine])
        want = sel.weights[[sel.indices.tolist().index(i) for i in mine]].double()
        assert got.mean().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(got.double(), want * len(mine) / want.sum(), atol=1e-6)


def test_the_warm_epoch_and_a_dropping_loader_mark_nothing():
    assert all(b.strong is None for b in _loader(rest="clean"))  # warm
    loader = _loader()
    list(loader)
    assert all(b.strong is None for b in loader) and loader.phase == "coreset"


def test_members_take_the_training_attack_and_the_rest_the_cheap_one():
    torch.manual_seed(1)
    model = _model()
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    strong = torch.tensor([True, False, True, False, False, True])
    strong_obj = PGDAT(eps=0.1, alpha=0.05, steps=3, random_start=False)
    cheap = Standard()  # the clean rest
    ctx = EpochContext(model, strong_obj, torch.optim.SGD(model.parameters(), lr=0.1), OptimConfig(),
                       torch.device("cpu"), 0, nullcontext, "last.pt", rest=cheap)
    b = Batch(x, y, torch.ones(6), torch.arange(6), None, None, strong)
    got = _attack(ctx, b)
    assert torch.equal(got[strong], strong_obj.attack(model, x[strong], y[strong]))
    assert torch.equal(got[~strong], x[~strong])
    assert not torch.equal(got[strong], x[strong])


def test_a_run_that_trains_the_rest_resumes_bit_for_bit(tmp_path):
    extra = ["selection.method=craig", "selection.rest=selection_attack", "selection.warm_epochs=1",
             "selection.interval=1", "selection.fraction=0.3", "optim.epochs=3"]
    a, recs = resumed_run_matches(tmp_path, 2, *extra)
    assert a.loader.weight_rule == "batch"  # CRAIG's resampling gives way: a member stands for itself
    n = len(a.loader.source)
    assert [(r["phase"], r["n_train"]) for r in recs if r["kind"] == "epoch"] == [("warm", n), ("coreset", n),
                                                                                 ("coreset", n)]


def test_a_bad_rest_is_refused_by_name():
    with pytest.raises(ConfigError, match="selection.rest must be drop, clean or selection_attack, got 'fgsm'"):
        tiny_config(Path("/tmp"), "selection.rest=fgsm")
    with pytest.raises(ConfigError, match="selection.rest trains every example once an epoch"):
        tiny_config(Path("/tmp"), "selection.rest=clean", "optim.weight_norm=resample")
    with pytest.raises(ValueError, match="rest must be one of"):
        _loader(rest="fgsm")
    with pytest.raises(ValueError, match="not 'resample'"):
        _loader(rest="clean", weight_rule="resample")
