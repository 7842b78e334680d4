"""The PyTorch-facing API: any model's last layer, any Dataset, select_coreset, CoresetLoader, train()."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import advcoreset
from advcoreset.config import ConfigError
from advcoreset.config_checks import load_config
from advcoreset.coreset import CoresetLoader, select_coreset
from advcoreset.models import create_model
from advcoreset.models.adapter import LastLayerError, last_layer
from advcoreset.objectives import Standard
from advcoreset.progress import make_progress
from advcoreset.selection import last_layer_grads
from advcoreset.training import Trainer

C, H, W, K = 3, 6, 10, 4  # non-square, three channels, four classes


def toy(n: int, seed: int) -> TensorDataset:
    """Float images in [0, 1] in which class c brightens columns 2c and 2c + 1: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.rand(n, C, H, W, generator=g) * 0.4
    band = (torch.arange(W).view(1, W) // 2 == y.view(n, 1)).float()  # (n, W)
    return TensorDataset(x + 0.6 * band.view(n, 1, 1, W), y)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, 32), nn.ReLU(), nn.Linear(32, K))


class Wrapped(nn.Module):
    """A plain module around a built-in classifier: only the forward hook can find its head."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class TimmStyle(nn.Module):
    """timm's convention: forward_features, forward_head(pre_logits=True), get_classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, 16), nn.Tanh())
        self.fc = nn.Linear(16, K)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, h: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return h if pre_logits else self.fc(h)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_hook_finds_the_same_layer_and_gradients_as_the_classifier_interface():
    torch.manual_seed(0)
    net = create_model("small_cnn", 1, 10, 8, width=4, hidden=16)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    wrapped = Wrapped(net)
    layer = last_layer(wrapped, x)
    assert layer.kind == "hook" and layer.linear is net.head
    g_net = last_layer_grads(net, Standard(), x, y)
    g_hook = last_layer_grads(wrapped, Standard(), x, y, layer=layer)
    assert torch.allclose(g_net, g_hook, atol=1e-6)


def test_timm_convention_gradients_match_autograd():
    torch.manual_seed(0)
    model = TimmStyle()
    x, y = torch.rand(5, C, H, W), torch.tensor([0, 1, 2, 3, 0])
    layer = last_layer(model, x)
    assert layer.kind == "timm" and layer.linear is model.fc
    got = last_layer_grads(model, Standard(), x, y, layer=layer)
    for i in range(5):  # brute force: autograd of example i's loss w.r.t. the final layer
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        want = torch.cat([model.fc.bias.grad, model.fc.weight.grad.flatten()])
        assert torch.allclose(got[i], want, atol=1e-5)


@pytest.mark.parametrize("model, why", [
    (nn.Sequential(nn.Conv2d(C, K, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), "no nn.Linear"),
    (nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K), nn.Softmax(1)), "not its output"),
])
def test_a_model_without_a_final_linear_is_refused_up_front(tmp_path, model, why):
    with pytest.raises(LastLayerError, match=why):
        CoresetLoader(toy(16, 0), model, "pgd", method="craig")
    cfg = load_config(None, ["selection.method=craig", "progress=none", f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(LastLayerError, match=why):
        advcoreset.train(cfg, model=model, train_set=toy(16, 0), test_set=toy(8, 1))
    assert not (tmp_path / "run").exists()  # refused before any epoch, nothing written


def _cfg(tmp_path, *extra: str):
    return load_config(None, [
        "objective.attack.eps=0.05", "objective.attack.alpha=0.02", "objective.attack.steps=1",
        "selection.fraction=0.25", "selection.warm_epochs=1", "selection.interval=1", "optim.epochs=3",
        "optim.batch_size=32", "optim.lr=0.05", "eval.every=0", "eval.pgd_steps=2", "progress=none",
        "threads=1", "device=cpu", f"out_dir={tmp_path / 'run'}", *extra])


@pytest.mark.parametrize("method", ["full", "random", "craig", "gradmatch"])
def test_plain_sequential_on_a_non_square_float_dataset_trains(tmp_path, method):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    res = advcoreset.train(_cfg(tmp_path, f"selection.method={method}"), model=model, train_set=toy(96, 0),
                           test_set=toy(40, 1))
    assert res["test_clean_acc"] > 0.5  # chance is 0.25
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    want = 96 if method == "full" else K * math.ceil(0.25 * 96 / K)
    assert [r["n_train"] for r in epochs] == [96, want, want]
    assert [r["epoch"] for r in recs if r["kind"] == "selection"] == ([] if method == "full" else [2, 3])


def test_loader_reproduces_select_coreset():
    ds = toy(64, 0)
    model = mlp()
    for method in ("craig", "gradmatch"):
        torch.manual_seed(5)  # the selection attack's random start
        idx, w, stats = select_coreset(model, ds, "pgd", method=method, fraction=0.3, batch_size=16, seed=3,
                                       objective_options={"steps": 2})
        torch.manual_seed(5)
        loader = CoresetLoader(ds, model, "pgd", method=method, fraction=0.3, warm_epochs=0, batch_size=16, seed=3,
                               objective_options={"steps": 2})
        seen = torch.cat([b.idx for b in loader])
        assert torch.equal(loader.selection.indices, idx) and torch.equal(loader.selection.weights, w)
        assert loader.stats["coreset_size"] == idx.numel() == stats["coreset_size"]
        assert set(seen.tolist()) <= set(idx.tolist())  # the epoch trained on the coreset only


def _loop(model: nn.Module, opt: torch.optim.Optimizer, loader: CoresetLoader, epochs: int) -> None:
    for _ in range(epochs):
        for x, y, w in loader:
            x_adv = loader.objective.attack(model, x, y)
            loss = (w * F.cross_entropy(model(x_adv), y, reduction="none")).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()


def _parts(ds: TensorDataset) -> tuple[nn.Module, torch.optim.Optimizer, CoresetLoader]:
    model = mlp(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = CoresetLoader(ds, model, "pgd", method="craig", fraction=0.3, warm_epochs=1, interval=2, batch_size=16,
                           seed=2, objective_options={"steps": 1, "eps": 0.05, "alpha": 0.03})
    return model, opt, loader


def test_killed_and_resumed_loader_loop_is_exact():
    ds = toy(48, 0)
    model, opt, loader = _parts(ds)
    torch.manual_seed(9)
    _loop(model, opt, loader, 4)
    # interrupted after epoch 2 (inside the coreset chosen at epoch 2), then rebuilt from a saved state
    m1, o1, l1 = _parts(ds)
    torch.manual_seed(9)
    _loop(m1, o1, l1, 2)
    saved = {"model": m1.state_dict(), "opt": o1.state_dict(), "loader": l1.state_dict(),
             "rng": torch.get_rng_state()}
    assert saved["loader"]["coreset"] is not None and saved["loader"]["epoch"] == 2
    m2, o2, l2 = _parts(ds)
    m2.load_state_dict(saved["model"])
    o2.load_state_dict(saved["opt"])
    l2.load_state_dict(saved["loader"])
    torch.set_rng_state(saved["rng"])
    _loop(m2, o2, l2, 2)
    for a, b in zip(model.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(loader.selection.indices, l2.selection.indices)


def _png_folder(root) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per in (("train", 8), ("val", 3)):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(per):
                px = (rng.integers(0, 120, size=(8, 8, 3)) + 120 * c).astype(np.uint8)
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(px).save(root / split / cls / f"{i}.png")


def test_image_folder_alias_trains(tmp_path):
    """``image_folder`` names the same dataset as ``imagefolder``; its statistics are computed from the run's
    training images (the trainer once looked them up by the literal name and failed on the alias)."""
    _png_folder(tmp_path / "data")
    common = ["data.test_subset=null", f"data.root={tmp_path / 'data'}", "model.width=4", "optim.epochs=1",
              "eval.every=0", "eval.pgd_steps=1", "objective.attack.steps=1", "progress=none", "threads=1",
              "device=cpu"]
    results = []
    for name in ("image_folder", "imagefolder"):
        cfg = load_config(None, [f"data.name={name}", f"out_dir={tmp_path / name}", *common])
        results.append(advcoreset.train(cfg))
    assert results[0]["test_clean_acc"] == results[1]["test_clean_acc"]
    assert results[0]["test_n"] == 6


def test_optimiser_by_name(tmp_path):
    cfg = _cfg(tmp_path, "optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.01", "selection.method=full",
               "optim.epochs=2")
    t = Trainer(cfg, model=mlp(), train_set=toy(96, 0), test_set=toy(40, 1))
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.optimizer.defaults["weight_decay"] == 0.01
    assert t.run()["test_clean_acc"] > 0.5
    assert "exp_avg" in next(iter(t.optimizer.state.values()))
    with pytest.raises(ConfigError, match=r"optim\.name"):
        load_config(None, ["optim.name=adam"])


def test_user_optimiser_is_used(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t = Trainer(_cfg(tmp_path, "selection.method=full"), model=model, train_set=toy(32, 0),
                                    test_set=toy(8, 1), optimizer=opt)
    assert t.optimizer is opt
    with pytest.raises(ConfigError, match="without its model"):
        Trainer(_cfg(tmp_path), train_set=toy(32, 0), test_set=toy(8, 1), optimizer=opt)


def test_dataset_records_know_aliases_and_shapes():
    from advcoreset.data.datasets import dataset_record, load_dataset

    assert dataset_record("image_folder").name == dataset_record("Image-Folder").name == "imagefolder"
    assert dataset_record("FashionMNIST").name == "fashion-mnist"
    for name, split in (("digits", True), ("fashion_mnist", False)):  # the two with files on every machine
        assert load_dataset(name, None, train=split).shape == dataset_record(name).shape


def test_selection_pass_reports_progress_and_streams_in_batches():
    buf = io.StringIO()
    idx, w, stats = select_coreset(mlp(), toy(40, 0), "fast", method="craig", fraction=0.5, batch_size=16,
                                   progress=make_progress("line", interval=0, stream=buf))
    attack = [ln.split(" (")[0] for ln in buf.getvalue().splitlines() if ln.startswith("selection: attack pass")]
    assert [ln.rsplit(" ", 1)[-1] for ln in attack[:3]] == ["16/40", "32/40", "40/40"]
    solver = [ln for ln in buf.getvalue().splitlines() if ln.startswith("selection: craig solver")]
    assert any("| class" in ln for ln in solver) and any(f"{idx.numel()} of 40 chosen" in ln for ln in solver)
    assert stats["train_size"] == 40 and float(w.sum()) == pytest.approx(40)  # CRAIG weights count the class


def test_builtin_model_on_a_user_dataset(tmp_path):
    """model=None builds config.model.name for the Dataset's images: uint8 square ones train, non-square ones are
    refused before any work with a message saying to bring a model."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = (torch.rand(64, 2, 8, 8, generator=g) * 100 + 120 * y.view(64, 1, 1, 1)).to(torch.uint8)
    cfg = _cfg(tmp_path, "model.width=4", "selection.method=random", "optim.epochs=2")
    t = Trainer(cfg, train_set=TensorDataset(x, y), test_set=TensorDataset(x[:16], y[:16]))
    assert t.model.mean.shape[1] == 2 and t.model.head.out_features == 2  # sized from the Dataset
    before = t.model.head.weight.detach().clone()
    res = t.run()
    assert 0 <= res["test_clean_acc"] <= 1 and not torch.equal(before, t.model.head.weight)
    with pytest.raises(ConfigError, match="square"):
        advcoreset.train(_cfg(tmp_path / "b"), train_set=toy(16, 0), test_set=toy(8, 1))


def test_random_selection_reports_its_gradient_error_as_the_solvers_do():
    """select_coreset gives grad_error for random too (the one comparison a user wants), equal to the error
    of its chosen indices and weights against the same gradients a solver reads; the subset is unchanged."""
    from advcoreset.coreset.select import selection_gradients
    from advcoreset.selection import approximation_error

    ds, model = toy(64, 0), mlp()
    torch.manual_seed(5)
    idx, w, stats = select_coreset(model, ds, "pgd", method="random", fraction=0.25, batch_size=16, seed=3,
                                   objective_options={"steps": 2})
    torch.manual_seed(5)  # the same random starts as the error pass
    from advcoreset.coreset.parts import resolve_selection_objective
    from advcoreset.data.sources import as_source
    grads = selection_gradients(model, resolve_selection_objective("pgd", {"steps": 2}), as_source(ds, "cpu"), 16)
    assert stats["grad_error"] == pytest.approx(approximation_error(grads, idx, w))
    assert 0 < stats["grad_error"] < 2 and stats["time_selection_attack"] >= 0 and stats["time_error_pass"] > 0
    idx2, _, _ = select_coreset(model, ds, "pgd", method="random", fraction=0.25, batch_size=16, seed=3)
    assert torch.equal(idx, idx2)  # drawn from the selector's generator, not from the error pass's RNG
    _, _, gm = select_coreset(model, ds, "pgd", method="gradmatch", fraction=0.25, batch_size=16, seed=3)
    assert gm["grad_error"] < stats["grad_error"] and "time_error_pass" not in gm


def test_a_compiled_model_selects_as_the_module_itself():
    ds, model = toy(64, 0), mlp()
    compiled = torch.compile(model, backend="eager")
    out = []
    for m in (compiled, model):
        torch.manual_seed(5)
        out.append(select_coreset(m, ds, "pgd", method="gradmatch", fraction=0.3, batch_size=16, seed=3,
                                  objective_options={"steps": 2}))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert last_layer(compiled, toy(4, 0).tensors[0]).linear is model[-1]


def _epochs_of(loader: CoresetLoader, steps_per_epoch: int | None, epochs: int) -> list[int]:
    """Iterate ``epochs`` times, stopping after ``steps_per_epoch`` batches (None: whole epochs); the batch
    counts each iteration yielded."""
    counts = []
    for _ in range(epochs):
        n = 0
        for _batch in loader:
            n += 1
            if steps_per_epoch is not None and n == steps_per_epoch:
                break
        counts.append(n)
    return counts


def test_an_early_stop_still_ends_the_epoch_and_the_schedule_goes_on():
    """A loop that stops early (break, a step budget, Lightning's len() batches) leaves the warm phase and
    re-selects on schedule, as a loop of whole epochs does."""
    ds = toy(64, 0)
    kw = dict(method="random", fraction=0.25, warm_epochs=1, interval=2, batch_size=8, seed=1)
    whole = CoresetLoader(ds, mlp(), "pgd", **kw)
    stopped = CoresetLoader(ds, mlp(), "pgd", **kw)
    assert _epochs_of(whole, None, 4) == [8, 2, 2, 2]
    assert _epochs_of(stopped, 1, 4) == [1, 1, 1, 1]
    assert whole.epoch == 4 and stopped.epoch == 3  # epochs done; the 4th ends when the next one starts
    sel_epochs = []
    probe = CoresetLoader(ds, mlp(), "pgd", **kw)
    for _ in range(5):
        for _batch in probe:
            break
        sel_epochs.append(probe.stats["epoch"] if probe.stats else None)
    assert sel_epochs == [None, 2, 2, 4, 4]  # selections at the starts of epochs 2 and 4 (1-based)


def test_len_is_right_before_an_epoch_that_reselects_and_set_epoch_moves_the_schedule():
    ds = toy(64, 0)
    loader = CoresetLoader(ds, mlp(), "pgd", method="random", fraction=0.25, warm_epochs=1, interval=2,
                           batch_size=8, seed=1)
    assert len(loader) == 8
    assert sum(1 for _ in loader) == 8
    assert len(loader) == 2  # the coreset chosen for epoch 2 (was: 8, then 2 batches yielded)
    assert loader.stats is not None and loader.stats["epoch"] == 2
    chosen = loader.selection.indices.clone()
    assert sum(1 for _ in loader) == 2 and torch.equal(loader.selection.indices, chosen)  # not chosen twice
    loader.set_epoch(0)
    assert len(loader) == 8 and loader.phase == "warm"
    loader.set_epoch(3)
    assert loader.selects_at() and len(loader) == 2 and loader.stats["epoch"] == 4
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        loader.set_epoch(-1)


class _Augmented(torch.utils.data.Dataset):
    """A dataset with a random horizontal flip (drawn from torch's global RNG) and no ``targets``."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), int(y)


def test_selection_reads_the_unaugmented_view_and_labels_cost_no_random_draws():
    from advcoreset.data.datasets import DataError
    from advcoreset.data.sources import DatasetSource

    plain = toy(64, 0)
    aug = _Augmented(plain)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    src = DatasetSource(aug)  # no targets: one read pass over the items, its flips drawn from a forked RNG
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(src.labels, plain.tensors[1])
    model = mlp()
    kw = dict(method="gradmatch", fraction=0.25, batch_size=16, seed=3, objective_options={"steps": 2})
    torch.manual_seed(5)
    ref = select_coreset(model, plain, "pgd", **kw)
    torch.manual_seed(5)
    viewed = select_coreset(model, aug, "pgd", selection_dataset=plain, **kw)
    assert torch.equal(viewed[0], ref[0]) and torch.equal(viewed[1], ref[1])  # chosen on the images themselves
    torch.manual_seed(5)
    flipped = select_coreset(model, aug, "pgd", **kw)
    assert viewed[2]["grad_error"] != flipped[2]["grad_error"]  # without the view: chosen on augmented views
    loader = CoresetLoader(aug, model, "pgd", warm_epochs=0, selection_dataset=plain, **kw)
    assert loader.source.view is plain and loader.source.dataset is aug
    with pytest.raises(DataError, match="selection view has 63 items"):
        DatasetSource(aug, selection_view=toy(63, 0))
    with pytest.raises(DataError, match="labels differ"):
        DatasetSource(aug, selection_view=TensorDataset(plain.tensors[0], plain.tensors[1].flip(0)))


def _two_group_sgd(model: nn.Module) -> torch.optim.SGD:
    first, last = model[1], model[3]
    return torch.optim.SGD([{"params": first.parameters(), "lr": 0.01},
                            {"params": last.parameters(), "lr": 0.001}], lr=0.01, momentum=0.9)


def test_a_users_optimiser_keeps_its_rates_and_its_groups(tmp_path):
    """train(dict, optimizer=...) without a schedule trains at the optimiser's own per-group rates (it
    logged the config's one-cycle 0.080 before); a schedule set explicitly scales each group by its shape."""
    model = mlp()
    opt = _two_group_sgd(model)
    cfg = {"selection": {"method": "full"}, "optim": {"epochs": 2, "batch_size": 32},
           "eval": {"pgd_steps": 1}, "progress": "none", "threads": 1, "device": "cpu",
           "out_dir": str(tmp_path / "a")}
    advcoreset.train(cfg, model=model, train_set=toy(64, 0), test_set=toy(16, 1), optimizer=opt)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.001]
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in recs if r["kind"] == "epoch"] == [0.01, 0.01]
    assert load_config(tmp_path / "a" / "config.yaml").optim.schedule == "none"  # recorded as it ran
    model2 = mlp()
    opt2 = _two_group_sgd(model2)
    t = Trainer(_cfg(tmp_path / "b", "selection.method=full", "optim.schedule=constant", "optim.lr=0.05",
                     "optim.epochs=1"), model=model2, train_set=toy(64, 0), test_set=toy(16, 1), optimizer=opt2)
    t.train_epoch(torch.arange(64), torch.ones(64))
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([0.01, 0.001])  # constant shape: own rates


def test_a_users_scheduler_steps_every_step_and_resumes(tmp_path):
    def parts():
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    cfg = {"selection": {"method": "full"}, "optim": {"epochs": 2, "batch_size": 16},
           "eval": {"pgd_steps": 1}, "progress": "none", "threads": 1, "device": "cpu"}
    model, opt, sched = parts()
    advcoreset.train({**cfg, "out_dir": str(tmp_path / "a")}, model=model, train_set=toy(64, 0),
                     test_set=toy(16, 1), optimizer=opt, scheduler=sched)
    assert sched.last_epoch == 8 and opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** (8 // 3))
    from advcoreset.config import Config
    run_cfg = Config.from_dict({**cfg, "optim": {**cfg["optim"], "schedule": "none"}, "out_dir": str(tmp_path / "b")})
    m1, o1, s1 = parts()
    Trainer(run_cfg, model=m1, train_set=toy(64, 0), test_set=toy(16, 1), optimizer=o1, scheduler=s1).run(
        stop_after=1)
    m2, o2, s2 = parts()  # a new process: everything rebuilt, then resumed
    Trainer(run_cfg, model=m2, train_set=toy(64, 0), test_set=toy(16, 1), optimizer=o2, scheduler=s2).run(
        resume=True)
    assert s2.last_epoch == 8
    for a, b in zip(model.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="optim.schedule=none"):
        Trainer(_cfg(tmp_path / "c"), model=m2, train_set=toy(64, 0), test_set=toy(16, 1), optimizer=o2,
                scheduler=s2)



def test_the_loaders_defaults_are_trains_and_attack_steps_is_honoured():
    """CoresetLoader and select_coreset default to what train() runs with ``selection.method: gradmatch``
    (the config's default, full, is no coreset: 30%, warm 1, interval 4, a 1-step selection attack of 2.5
    eps); attack_steps / attack_alpha change the selection attack (they were accepted and ignored, so a loop
    paid the full training attack at every round)."""
    import inspect

    from advcoreset.config import SelectionConfig
    from advcoreset.objectives import PGDAT

    sel = SelectionConfig()
    params = inspect.signature(CoresetLoader).parameters
    for name, want in (("method", "gradmatch"), ("fraction", sel.fraction), ("warm_epochs", sel.warm_epochs),
                       ("interval", sel.interval)):
        assert params[name].default == want, name
    assert inspect.signature(select_coreset).parameters["method"].default == "gradmatch"
    ds = toy(32, 0)
    default = CoresetLoader(ds, mlp(), "pgd", objective_options={"eps": 0.1, "steps": 10})
    assert (default.objective.steps, default.objective.alpha) == (1, pytest.approx(0.25))
    three = CoresetLoader(ds, mlp(), "pgd", objective_options={"eps": 0.1, "steps": 10}, attack_steps=3)
    assert (three.objective.steps, three.objective.alpha) == (3, pytest.approx(0.25 / 3))
    assert CoresetLoader(ds, mlp(), "pgd", attack_steps=2, attack_alpha=0.01).objective.alpha == 0.01
    own = PGDAT(eps=0.1, alpha=0.02, steps=5)
    assert CoresetLoader(ds, mlp(), own).objective is own  # an object attacks as it was built
    with pytest.raises(ValueError, match="attack_steps / attack_alpha apply to an objective given by name"):
        CoresetLoader(ds, mlp(), own, attack_steps=1)
    with pytest.raises(ValueError, match="attack_steps must be >= 1"):
        select_coreset(mlp(), ds, "pgd", attack_steps=0)
