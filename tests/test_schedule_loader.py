"""LR / coreset schedules and the device-resident weighted batch iterator."""

from __future__ import annotations

import pytest
import torch
from tests_helpers import factory

from advcoreset.config import OptimConfig
from advcoreset.coreset import CoresetLoader
from advcoreset.data import iterate_batches, random_crop_flip, stratified_order
from advcoreset.training.schedule import lr_at


def test_onecycle_peaks_and_ends_at_zero():
    cfg = OptimConfig(lr=0.2, schedule="onecycle", pct_start=0.25)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(0.25, cfg) == pytest.approx(0.2)
    assert lr_at(1.0, cfg) == pytest.approx(0.0)
    assert lr_at(0.125, cfg) == pytest.approx(0.1)


def test_step_and_cosine():
    cfg = OptimConfig(lr=1.0, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_at(p, cfg) for p in (0.1, 0.5, 0.8)] == pytest.approx([1.0, 0.1, 0.01])
    cfg = OptimConfig(lr=1.0, schedule="cosine")
    assert lr_at(0.5, cfg) == pytest.approx(0.5)


def test_coreset_schedule():
    data = [(torch.rand(1, 8, 8), i % 10) for i in range(40)]
    ld = CoresetLoader(data, factory(), method="craig", warm_epochs=2, interval=3)
    assert [ld.is_warm(e) for e in range(6)] == [True, True, False, False, False, False]
    assert [e for e in range(12) if ld.selects_at(e)] == [2, 5, 8, 11]
    full = CoresetLoader(data, factory(), method="full", warm_epochs=2, interval=3)
    assert all(full.is_warm(e) and not full.selects_at(e) for e in range(5))


def test_batches_cover_exactly_the_indices_with_their_weights():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    labels = torch.arange(20) % 3
    idx = torch.tensor([1, 4, 7, 9, 13, 19])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    g = torch.Generator().manual_seed(0)
    seen = {}
    for b in iterate_batches(images, labels, idx, w, 4, g):
        for i, wi, xi, yi in zip(b.idx.tolist(), b.w.tolist(), b.x, b.y.tolist(), strict=True):
            seen[i] = wi
            assert torch.allclose(xi, torch.full_like(xi, i / 255))  # the pixels belong to that index
            assert yi == i % 3
    assert seen == dict(zip(idx.tolist(), w.tolist(), strict=True))


def test_crop_flip_is_a_shifted_or_mirrored_copy():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 2, 6, 6)
    out = random_crop_flip(x, padding=2, flip=True, generator=g)
    assert out.shape == x.shape
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):  # brute force: every output is one of the 5x5x2 crops of the padded image
        cands = [pad[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        cands += [c.flip(2) for c in cands]
        assert any(torch.equal(out[i], c) for c in cands)
    assert torch.equal(random_crop_flip(x, 0, False, g), x)


def test_stratified_order_prefixes_are_balanced():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    order = stratified_order(labels, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(100))
    counts = torch.bincount(labels[order[:30]], minlength=3)
    assert counts.tolist() == [10, 10, 10]
