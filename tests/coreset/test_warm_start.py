"""``selection.warm_start: rs2``: the warm epochs train on RS2's fresh uniform subsets (every class's share,
without replacement across the warm epochs) instead of all data; selection then goes on as usual, and a run
resumes bit for bit in the middle of its warm start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests_helpers import resumed_run_matches, tiny_config
from torch import nn

from advcoreset.config import ConfigError
from advcoreset.coreset import CoresetLoader
from advcoreset.data.sources import TensorSource
from advcoreset.training import Trainer


def _loader(**kw) -> CoresetLoader:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    images, labels = torch.rand(40, 1, 4, 4), torch.arange(40) % 4
    return CoresetLoader(TensorSource(images, labels), model, "pgd", method="random", fraction=0.3,
                         batch_size=8, **kw)


def test_warm_epochs_draw_each_class_share_without_replacement():
    loader = _loader(warm_start="rs2", warm_epochs=3, interval=1)
    labels = loader.source.labels
    drawn = []
    for _ in range(3):
        assert loader.phase == "warm"
        plan_idx, plan_w = loader.indices, loader.weights
        seen = torch.cat([b.idx for b in loader])
        assert torch.equal(seen.sort().values, plan_idx.sort().values)  # the epoch trains on the draw
        assert torch.bincount(labels[plan_idx], minlength=4).tolist() == [3, 3, 3, 3]  # ceil(0.3 x 10)
        assert torch.allclose(plan_w, torch.full_like(plan_w, 10 / 3))  # n_c / budget_c
        drawn.append(set(plan_idx.tolist()))
    assert not (drawn[0] & drawn[1] or drawn[0] & drawn[2] or drawn[1] & drawn[2])  # 9 of each class's 10
    assert loader.start_epoch() is not None and loader.phase == "coreset"  # then the first round, as usual


def test_a_full_warm_start_trains_on_everything():
    loader = _loader(warm_epochs=1)
    assert torch.equal(torch.cat([b.idx for b in loader]).sort().values, torch.arange(40))


def test_a_run_with_an_rs2_warm_start_resumes_bit_for_bit_and_trains_less_while_warm(tmp_path):
    extra = ["selection.method=gradmatch", "selection.warm_start=rs2", "selection.warm_epochs=2",
             "selection.interval=1", "selection.fraction=0.3", "optim.epochs=3"]
    a, recs = resumed_run_matches(tmp_path, 1, *extra)  # stopped inside the warm start
    epochs = [r for r in recs if r["kind"] == "epoch"]
    n = len(a.loader.source)
    assert [r["phase"] for r in epochs] == ["warm", "warm", "coreset"]
    assert all(r["n_train"] < 0.35 * n for r in epochs)


def test_the_pool_follows_the_run_seed(tmp_path):
    extra = ["selection.method=gradmatch", "selection.pool=2", "selection.warm_epochs=0", "selection.interval=1"]
    assert Trainer(tiny_config(tmp_path / "a", *extra, "seed=3")).loader.pool.seed == 3


def test_a_bad_warm_start_is_refused_by_name():
    with pytest.raises(ConfigError, match="selection.warm_start must be full or rs2, got 'half'"):
        tiny_config(Path("/tmp"), "selection.warm_start=half")
    with pytest.raises(ValueError, match="warm_start must be one of"):
        _loader(warm_start="half")
