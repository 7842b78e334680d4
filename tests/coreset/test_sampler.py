"""The coreset as torch.utils.data: ``CoresetSampler`` (order, weights, set_epoch, state, rank/world split),
``CoresetLoader`` over a real ``DataLoader`` (its arguments pass through), and dict items (``keys=``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, TensorDataset

import advcoreset
from advcoreset.coreset import CoresetLoader, CoresetSampler, select_coreset
from advcoreset.data.datasets import DataError
from advcoreset.data.sources import TensorItems, TensorSource

K = 4


def toy(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 6, 6, generator=g), torch.arange(n) % K)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, K))


def epochs(loader: CoresetLoader, n: int) -> list[list]:
    """``n`` epochs of (x, y, w, idx) tuples."""
    return [[(b.x, b.y, b.w, b.idx) for b in loader] for _ in range(n)]


def same(a: list[list], b: list[list]) -> bool:
    return len(a) == len(b) and all(len(p) == len(q) and all(torch.equal(s, t) for u, v in zip(p, q, strict=True)
                                                             for s, t in zip(u, v, strict=True))
                                    for p, q in zip(a, b, strict=True))


def flip_collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A caller's collate_fn (module level: it travels to worker processes)."""
    return torch.stack([x.flip(-1) for x, _ in items]), torch.tensor([int(y) for _, y in items])


KW = dict(method="random", fraction=0.5, warm_epochs=1, interval=1, batch_size=8, seed=4)


# ------------------------------------------------------------------------------------- DataLoader arguments
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")
def test_dataloader_arguments_pass_through_and_workers_change_nothing():
    """num_workers, persistent_workers, prefetch_factor, pin_memory reach the DataLoader (they used to be
    refused as unknown selector options) and the batches are those of the in-process default."""
    ds = toy(40)
    base = epochs(CoresetLoader(ds, mlp(), "pgd", **KW), 3)
    loader = CoresetLoader(ds, mlp(), "pgd", num_workers=2, persistent_workers=True, prefetch_factor=2,
                           pin_memory=True, **KW)
    assert loader.dataloader.num_workers == 2 and loader.dataloader.persistent_workers
    assert loader.dataset is ds and isinstance(loader.sampler, CoresetSampler) and loader.batch_size == 8
    assert same(epochs(loader, 3), base)


def test_the_in_memory_source_with_workers_draws_its_augmentation_as_before():
    src = TensorSource((torch.rand(40, 1, 6, 6) * 255).to(torch.uint8), torch.arange(40) % K, padding=1, flip=True)
    base = epochs(CoresetLoader(src, mlp(), "pgd", **KW), 2)
    assert same(epochs(CoresetLoader(src, mlp(), "pgd", num_workers=2, **KW), 2), base)


def test_drop_last_and_collate_fn():
    ds = toy(44)
    loader = CoresetLoader(ds, mlp(), "pgd", drop_last=True, **KW)
    assert [b.y.numel() for b in loader] == [8] * 5 and len(loader) == 3  # 44 -> 5 full batches; coreset of 24
    assert [b.y.numel() for b in loader] == [8] * 3 and loader.selection.indices.numel() == 24
    plain = CoresetLoader(ds, mlp(), "pgd", **KW)
    flipped = CoresetLoader(ds, mlp(), "pgd", collate_fn=flip_collate, **KW)
    for a, b in zip(plain, flipped, strict=True):
        assert torch.equal(a.x.flip(-1), b.x) and torch.equal(a.y, b.y) and torch.equal(a.w, b.w)


def test_options_the_coreset_decides_are_refused_with_their_names():
    ds = toy(16)
    with pytest.raises(ValueError, match=r"\['sampler'\]: the coreset decides"):
        CoresetLoader(ds, mlp(), "pgd", sampler=range(16))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]; DataLoader arguments: .*num_workers"):
        CoresetLoader(ds, mlp(), "pgd", bogus=1)
    with pytest.raises(ValueError, match="already lives on"):
        src = TensorSource(torch.rand(16, 1, 6, 6), torch.arange(16) % K, "meta")
        CoresetLoader(src, mlp(), "pgd", device="cpu", num_workers=1)


def test_the_in_memory_fetch_is_one_gather_per_batch(monkeypatch):
    calls = {"item": 0, "items": 0}
    item, items = TensorItems.__getitem__, TensorItems.__getitems__

    def one(self, i):
        calls["item"] += 1
        return item(self, i)

    def many(self, idx):
        calls["items"] += 1
        return items(self, idx)

    monkeypatch.setattr(TensorItems, "__getitem__", one)
    monkeypatch.setattr(TensorItems, "__getitems__", many)
    src = TensorSource(torch.rand(40, 1, 6, 6), torch.arange(40) % K)
    n = sum(1 for _ in CoresetLoader(src, mlp(), "pgd", **KW))
    assert calls == {"item": 0, "items": n} and n == 5


# ------------------------------------------------------------------------------------------------ sampler
@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 40), world=st.integers(1, 5), drop_last=st.booleans())
def test_rank_split_is_distributed_samplers(k: int, world: int, drop_last: bool):
    """Unshuffled, every rank's share equals DistributedSampler's; shuffled, the ranks together hold every
    coreset index once (plus DistributedSampler's padding repeats, or minus its cut), each with its weight."""
    idx, w = torch.arange(100, 100 + k), torch.rand(k) + 0.5
    shares = []
    for r in range(world):
        s = CoresetSampler(torch.arange(k), shuffle=False, rank=r, world=world, drop_last=drop_last)
        ref = DistributedSampler(range(k), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last)
        assert list(s) == list(ref) and len(s) == len(ref)
        t = CoresetSampler(idx, w, seed=7, rank=r, world=world, drop_last=drop_last)
        t.set_epoch(3)
        got, wt = t.epoch_plan()
        assert len(t) == got.numel() and torch.equal(wt, t.weights_of(got)) and list(t) == got.tolist()
        shares.append(got)
    full = torch.stack(shares, 1).flatten()  # the epoch's order, as the ranks interleave it
    assert sorted(full.tolist()) == sorted(set(full.tolist())) or not drop_last  # a cut order holds each once
    if drop_last:
        assert full.numel() == k - k % world
    else:
        pad = full.numel() - k
        assert sorted(full[:k].tolist()) == idx.tolist() and torch.equal(full[k:], full[:k].repeat(world)[:pad])


def test_set_epoch_orders_and_state_resume():
    idx, w = torch.arange(10, 30), torch.rand(20) + 0.1
    a, b = CoresetSampler(idx, w, seed=1), CoresetSampler(idx, w, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) == list(a)  # seeded: a function of (seed, epoch), as DistributedSampler
    b.set_epoch(3)
    assert list(a) != list(b) and sorted(a) == sorted(b) == idx.tolist()
    run = CoresetSampler(idx, w, weight_rule="resample", generator=torch.Generator().manual_seed(5))
    orders = [list(run) for _ in range(4)]
    again = CoresetSampler(idx, w, weight_rule="resample", generator=torch.Generator().manual_seed(5))
    _ = [list(again) for _ in range(2)]
    saved = again.state_dict()
    resumed = CoresetSampler(torch.arange(3), weight_rule="resample", generator=torch.Generator())
    resumed.load_state_dict(saved)
    assert [list(resumed) for _ in range(2)] == orders[2:]
    assert resumed.epoch == saved["epoch"] and torch.equal(resumed.weights, w)
    with pytest.raises(ValueError, match="not in the current coreset"):
        resumed.weights_of(torch.tensor([0]))


def test_loader_state_dict_resumes_bit_exact():
    ds = toy(40)
    whole = epochs(CoresetLoader(ds, mlp(), "pgd", **KW), 4)
    first = CoresetLoader(ds, mlp(), "pgd", **KW)
    head = epochs(first, 2)
    later = CoresetLoader(ds, mlp(), "pgd", **KW)
    later.load_state_dict(first.state_dict())
    assert same(head + epochs(later, 2), whole)
    later.set_epoch(5)
    assert later.sampler.epoch == 5


@pytest.mark.parametrize("rule", ["batch", "epoch", "resample"])
def test_weights_per_batch_are_the_selections(rule: str):
    loader = CoresetLoader(toy(48), mlp(), "pgd", method="gradmatch", fraction=0.3, warm_epochs=0, batch_size=8,
                           weight_rule=rule, objective_options={"steps": 1})
    batches = list(loader)
    sel = loader.selection
    idx, w = torch.cat([b.idx for b in batches]), torch.cat([b.w for b in batches])
    if rule == "resample":
        assert bool((w == 1).all()) and set(idx.tolist()) <= set(sel.indices.tolist())
        assert idx.numel() == sel.indices.numel()
    else:
        assert sorted(idx.tolist()) == sel.indices.tolist()
        assert torch.equal(w, loader.sampler.weights_of(idx))
        assert torch.equal(loader.sampler.weights_of(sel.indices), sel.weights)


def test_ranks_of_a_loader_share_each_epoch():
    """Three ranks of one seed: each epoch's coreset split over them as DistributedSampler splits (22 -> 8 each,
    the first two of the order repeated)."""
    ds = toy(42)
    loaders = [CoresetLoader(ds, mlp(), "pgd", rank=r, world=3, **KW) for r in range(3)]
    per_rank = [epochs(ld, 2) for ld in loaders]
    chosen = loaders[0].selection.indices
    for e, held in ((0, torch.arange(42)), (1, chosen)):
        idx = torch.cat([b[3] for rank in per_rank for b in rank[e]])
        assert set(idx.tolist()) == set(held.tolist()) and idx.numel() == -(-held.numel() // 3) * 3
    assert chosen.numel() == 22 and all(torch.equal(ld.selection.indices, chosen) for ld in loaders)
    assert [len(ld) for ld in loaders] == [1, 1, 1] and [len(r[1]) for r in per_rank] == [1, 1, 1]


# ------------------------------------------------------------------------------------------- dict items
class DictItems(Dataset):
    """A Hugging Face datasets-style set: dict items holding a PIL image and an int label."""

    def __init__(self, base: TensorDataset, as_pil: bool = True) -> None:
        x, y = base.tensors
        px = (x[:, 0] * 255).to(torch.uint8).numpy()
        self.items = [{"image": Image.fromarray(p) if as_pil else p, "label": int(c), "id": i}
                      for i, (p, c) in enumerate(zip(px, y.tolist(), strict=True))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _uint8(base: TensorDataset) -> TensorDataset:
    x, y = base.tensors
    return TensorDataset((x * 255).to(torch.uint8), y)


@pytest.mark.parametrize("as_pil", [True, False])
def test_dict_items_read_through_keys(as_pil: bool):
    base = toy(40)
    hf, ref = DictItems(base, as_pil), _uint8(base)
    assert same(epochs(CoresetLoader(hf, mlp(), "pgd", keys=("image", "label"), **KW), 2),
                epochs(CoresetLoader(ref, mlp(), "pgd", **KW), 2))
    kw = dict(method="gradmatch", fraction=0.3, batch_size=8, objective_options={"steps": 1})
    torch.manual_seed(2)
    got = select_coreset(mlp(), hf, "pgd", keys=("image", "label"), **kw)
    torch.manual_seed(2)
    want = select_coreset(mlp(), ref, "pgd", **kw)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(DataError, match=r"pass keys=\(image key, label key\)"):
        CoresetLoader(hf, mlp(), "pgd")
    with pytest.raises(DataError, match="lacks one of them"):
        CoresetLoader(hf, mlp(), "pgd", keys=("img", "label"))


def test_train_reads_dict_items_through_keys(tmp_path):
    cfg = {"selection": {"method": "random", "fraction": 0.5, "warm_epochs": 0},
           "optim": {"epochs": 1, "batch_size": 8}, "eval": {"pgd_steps": 1}, "progress": "none", "threads": 1,
           "device": "cpu", "out_dir": str(tmp_path / "r")}
    res = advcoreset.train(cfg, model=mlp(), train_set=DictItems(toy(32)), test_set=DictItems(toy(8, 1)),
                           keys=("image", "label"))
    assert res["test_n"] == 8 and 0 <= res["test_clean_acc"] <= 1


def test_keyed_labels_come_without_decoding_images():
    from advcoreset.data.keyed import KeyedDataset, as_image

    ds = KeyedDataset(DictItems(toy(12)).items, ("image", "label"))
    assert torch.equal(ds.labels, torch.arange(12) % K)
    hwc = np.zeros((5, 7, 3), dtype=np.uint8)
    assert as_image(hwc).shape == (3, 5, 7) and as_image(torch.zeros(5, 7)).shape == (1, 5, 7)
    with pytest.raises(DataError, match="two strings"):
        KeyedDataset([], "image")
