"""The device-resident weighted batch iterator, the batched crop / flip augmentation and the stratified order
(data/loader.py, data/splits.py)."""

from __future__ import annotations

import torch

from advcoreset.data import iterate_batches, random_crop_flip, stratified_order


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
