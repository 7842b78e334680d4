"""End-to-end training on scikit-learn's digits: resume equals uninterrupted, logs, errors, coresets."""

from __future__ import annotations

import json

import pytest
import torch

from advcoreset.checkpoint import load_checkpoint
from advcoreset.config import Config, ConfigError
from advcoreset.config_checks import load_config
from advcoreset.training import Trainer, TrainingError, train


def tiny(tmp_path, *overrides: str) -> Config:
    return load_config(None, [
        "data.name=digits", "data.test_subset=200", "data.augment=crop", "data.crop_padding=1",
        "model.width=16", "objective.attack.eps=0.1", "objective.attack.alpha=0.04", "selection.method=full",
        "objective.attack.steps=2",
        "optim.epochs=3", "optim.batch_size=64", "optim.lr=0.2", "eval.pgd_steps=3", "eval.val_pgd_steps=2",
        "eval.every=1", "progress=none", "threads=1", f"out_dir={tmp_path / 'run'}", *overrides])


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


@pytest.mark.parametrize("selection", ["full", "craig", "gradmatch"])
def test_resume_equals_uninterrupted(tmp_path, selection):
    """Killed after epoch 2, between selection rounds (selections before epochs 2 and 4): the resumed epoch 3
    trains on the coreset restored from the checkpoint and must match the uninterrupted run bit for bit."""
    extra = [f"selection.method={selection}", "selection.warm_epochs=1", "selection.interval=2",
             "selection.fraction=0.5", "optim.epochs=4"]
    a = Trainer(tiny(tmp_path / "a", *extra))
    ra = a.run()
    b = Trainer(tiny(tmp_path / "b", *extra))
    assert b.run(stop_after=2) == {"stopped_after": 2}
    saved = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["coreset"]
    assert (saved is None) == (selection == "full")
    # a new process would rebuild everything from the config: do the same here
    c = Trainer(tiny(tmp_path / "b", *extra))
    rc = c.run(resume=True)
    for wa, wc in zip(_weights(a.model), _weights(c.model), strict=True):
        assert torch.equal(wa, wc)
    assert ra["test_clean_acc"] == rc["test_clean_acc"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3, 4]
    if selection != "full":
        assert [r["epoch"] for r in lines if r["kind"] == "selection"] == [2, 4]
        assert [r["phase"] for r in lines if r["kind"] == "epoch"] == ["warm", "coreset", "coreset", "coreset"]


def test_run_writes_logs_checkpoint_and_learns(tmp_path):
    cfg = tiny(tmp_path, "optim.epochs=4", "data.val_size=100")
    res = train(cfg)
    out = tmp_path / "run"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(epochs) == 4 and recs[-1]["kind"] == "final"
    for key in ("time_attack", "time_update", "time_epoch_wall", "train_loss", "lr", "n_train"):
        assert key in epochs[0]
    assert epochs[0]["n_train"] == 1397 - 100
    assert "val_pgd2_acc" in epochs[0] and (out / "best.pt").exists()
    assert res["test_clean_acc"] > 0.5  # digits is easy: chance is 0.1
    assert res["test_pgd3_acc"] <= res["test_clean_acc"]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 4 and Config.from_yaml(out / "config.yaml") == cfg
    with pytest.raises(TrainingError, match="already holds a run"):
        train(cfg)  # never overwrite a finished run silently


def test_nan_loss_is_reported_and_checkpoint_kept(tmp_path):
    cfg = tiny(tmp_path, "optim.epochs=3")
    t = Trainer(cfg)
    t.run(stop_after=1)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    t2 = Trainer(cfg)
    with torch.no_grad():
        for p in t2.model.parameters():
            p.fill_(float("nan"))
    t2.state.epoch = 1
    with pytest.raises(TrainingError, match="loss became nan"):
        t2.train_epoch(torch.arange(128), torch.ones(128))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_coreset_training_logs_selection(tmp_path):
    cfg = tiny(tmp_path, "selection.method=gradmatch", "selection.fraction=0.3", "selection.warm_epochs=1",
               "selection.interval=1", "optim.epochs=3", "eval.every=0")
    train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sels = [r for r in recs if r["kind"] == "selection"]
    assert [r["epoch"] for r in sels] == [2, 3]
    labels = Trainer(cfg).labels
    per_class = torch.bincount(labels).tolist()
    expected = [-(-3 * n // 10) for n in per_class]  # ceil(0.3 n_c)
    assert sels[0]["class_histogram"] == expected
    assert 0 <= sels[0]["grad_error"] < 1
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert epochs[0]["phase"] == "warm" and epochs[1]["phase"] == "coreset"
    assert epochs[1]["n_train"] == sum(expected)


def test_resume_refuses_a_changed_config(tmp_path):
    Trainer(tiny(tmp_path)).run(stop_after=1)
    with pytest.raises(TrainingError, match="different settings"):
        Trainer(tiny(tmp_path, "optim.lr=0.3")).run(resume=True)


def test_uniform_coreset_weights_give_the_full_data_update(tmp_path):
    """Training one epoch on all indices with weight 3 equals training with weight 1 (normalised)."""
    cfg = tiny(tmp_path, "objective.name=standard", "data.augment=none")
    ws = []
    for w in (1.0, 3.0):
        t = Trainer(cfg)
        n = t.labels.numel()
        t.train_epoch(torch.arange(n), torch.full((n,), w))
        ws.append(_weights(t.model))
    for a, b in zip(*ws, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def _epoch_weights(cfg: Config, w: torch.Tensor) -> list[torch.Tensor]:
    t = Trainer(cfg)
    t.train_epoch(torch.arange(w.numel()), w)
    return _weights(t.model)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_weight_normalisation_rules(tmp_path):
    """batch: each mini-batch's loss is sum w l / sum w, so scaling one batch's weights changes nothing;
    epoch: sum w l / (B * mean w), so it does. With one batch holding everything the two rules agree.
    (Two steps only: float rounding grows over a long epoch.)"""
    base = ["objective.name=standard", "data.augment=none", "optim.batch_size=64"]
    n = 128
    w = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 10 + 0.1
    one = [*base, f"optim.batch_size={n}"]
    assert _same(_epoch_weights(tiny(tmp_path, *one, "optim.weight_norm=batch"), w),
                 _epoch_weights(tiny(tmp_path, *one, "optim.weight_norm=epoch"), w))
    # Scale the weights of the epoch's first mini-batch (the trainer's seeded order) by 7.
    probe = Trainer(tiny(tmp_path, *base))
    first = torch.randperm(n, generator=torch.Generator().set_state(probe.generator.get_state()))[:64]
    w7 = w.clone()
    w7[first] *= 7
    cfg = tiny(tmp_path, *base, "optim.weight_norm=batch")
    assert _same(_epoch_weights(cfg, w), _epoch_weights(cfg, w7))
    ecfg = tiny(tmp_path, *base, "optim.weight_norm=epoch")
    assert not _same(_epoch_weights(ecfg, w), _epoch_weights(ecfg, w7))


def test_resample_weights(tmp_path):
    """resample: the epoch trains points drawn in proportion to the weights with unit weights, so all the
    weight on one point trains that point every step; uniform weights train the coreset as it is."""
    base = ["objective.name=standard", "data.augment=none", "optim.batch_size=32"]
    cfg = tiny(tmp_path, *base, "optim.weight_norm=resample")
    n = 96
    w = torch.zeros(n)
    w[5] = 4.0
    only5 = _epoch_weights(cfg, w)
    t = Trainer(cfg)
    t.train_epoch(torch.full((n,), 5), torch.ones(n))
    assert _same(only5, _weights(t.model))
    u = torch.full((n,), 2.5)
    assert _same(_epoch_weights(cfg, u), _epoch_weights(tiny(tmp_path, *base, "optim.weight_norm=batch"), u))
    assert not _same(only5, _epoch_weights(cfg, u))
    # auto (the default): resample for CRAIG, the per-batch rule otherwise
    w = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 10 + 0.1
    for method, rule in (("craig", "resample"), ("gradmatch", "batch")):
        auto = tiny(tmp_path, *base, f"selection.method={method}")
        assert auto.optim.weight_norm == "auto"
        explicit = tiny(tmp_path, *base, f"selection.method={method}", f"optim.weight_norm={rule}")
        assert _same(_epoch_weights(auto, w), _epoch_weights(explicit, w))
    assert not _same(_epoch_weights(tiny(tmp_path, *base, "selection.method=craig"), w),
                     _epoch_weights(tiny(tmp_path, *base, "selection.method=gradmatch"), w))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A real kill (SIGKILL mid-run, from the CLI) loses nothing written: --resume reaches the same weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--set", "data.name=digits", "--set", "data.test_subset=64", "--set", "model.width=8",
            "--set", "objective.attack.steps=2", "--set", "optim.epochs=10", "--set", "eval.every=0",
            "--set", "eval.pgd_steps=2", "--set", "progress=none", "--set", "threads=1"]
    cmd = [sys.executable, "-m", "advcoreset.cli", "train"]
    subprocess.run([*cmd, "--out", str(tmp_path / "a"), *args], check=True, capture_output=True)
    b = tmp_path / "b"
    proc = subprocess.Popen([*cmd, "--out", str(b), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (b / "last.pt").exists():
        time.sleep(0.05)
    # Kill at once: the first checkpoint has landed, so the run is inside a later epoch (a fixed sleep here
    # let a fast machine finish all epochs first).
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(b / "last.pt")["epoch"]
    assert 1 <= killed_at < 10, "the kill should land mid-run"
    subprocess.run([*cmd, "--out", str(b), "--resume", "--set", "threads=1"], check=True, capture_output=True)
    wa = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    wb = load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    epochs = [json.loads(x)["epoch"] for x in (b / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert epochs == list(range(1, 11))


@pytest.mark.parametrize("rule", ["batch", "epoch"])
def test_accumulated_steps_equal_one_batch_of_them_all(tmp_path, rule):
    """optim.accumulate=2 at batch 32 makes the updates of batch 64 with the same weighted examples: the step's
    loss is normalised by the weight of both mini-batches together (not each by its own), and the schedule
    moves per optimiser step (onecycle, a short last step included: 160 = 64 + 64 + 32)."""
    base = ["data.augment=none", "objective.attack.random_start=false", "optim.momentum=0", "amp=false",
            "optim.schedule=onecycle", f"optim.weight_norm={rule}"]  # fp32: the sums compare to 1e-5
    n = 160
    w = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 5 + 0.1
    runs = {}
    for acc, batch in ((1, 64), (2, 32), (1, 32)):
        t = Trainer(tiny(tmp_path, *base, f"optim.batch_size={batch}", f"optim.accumulate={acc}"))
        stats = t.train_epoch(torch.arange(n), w)
        runs[(acc, batch)] = (_weights(t.model), stats["lr"])
    (big, lr_big), (acc2, lr_acc2), (small, _) = runs[(1, 64)], runs[(2, 32)], runs[(1, 32)]
    assert lr_acc2 == lr_big
    for a, b in zip(big, acc2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not _same(big, small)  # the comparison can fail: batch 32 alone is another run


def test_accumulate_steps_a_users_scheduler_once_per_step(tmp_path):
    cfg = tiny(tmp_path, "optim.schedule=none", "optim.batch_size=32", "optim.accumulate=3", "model.width=null")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    t = Trainer(cfg, model=model, optimizer=opt, scheduler=sched)
    t.train_epoch(torch.arange(200), torch.ones(200))  # 7 mini-batches: steps of 3, 3 and 1
    assert sched.last_epoch == 3
    with pytest.raises(ConfigError, match="optim.accumulate"):
        tiny(tmp_path, "optim.accumulate=0")


def test_random_selection_records_its_gradient_error_outside_the_training_time(tmp_path):
    """selection.measure_error (auto: on for random) takes the gradient pass at random's rounds: every selection
    record and results.json carry grad_error, the pass is timed as time_error_pass and left out of
    time_train_total (and so of the bench's cost), and the run trains exactly as without the measurement."""
    base = ["selection.method=random", "selection.fraction=0.3", "selection.warm_epochs=1",
            "selection.interval=1", "eval.every=0"]
    res = train(tiny(tmp_path / "on", *base))
    recs = [json.loads(x) for x in (tmp_path / "on" / "run" / "metrics.jsonl").read_text().splitlines()]
    sel = [r for r in recs if r["kind"] == "selection"]
    assert len(sel) == 2 and all(0 < r["grad_error"] < 2 and r["time_error_pass"] > 0 for r in sel)
    assert res["selection_rounds_with_error"] == 2
    assert res["grad_error_mean"] == pytest.approx(sum(r["grad_error"] for r in sel) / 2)
    times = res["times"]
    assert res["time_error_pass"] == pytest.approx(sum(r["time_error_pass"] for r in sel)) == times["error_pass"]
    assert res["time_train_total"] == pytest.approx(
        sum(times[k] for k in ("epoch_wall", "selection_attack", "selection_solver")))
    assert all(r["time_selection_attack"] < r["time_error_pass"] for r in sel)  # the pass is not selection time
    off = Trainer(tiny(tmp_path / "off", *base, "selection.measure_error=false"))
    res_off = off.run()
    assert res_off["grad_error_mean"] is None and "error_pass" not in res_off["times"]
    on = load_checkpoint(tmp_path / "on" / "run" / "last.pt")["model"]
    for k, v in off.model.state_dict().items():
        assert torch.equal(on[k], v), k  # the measurement drew nothing from the run's random streams


def test_measure_error_auto_is_on_for_random_and_off_for_rs2():
    from advcoreset.config import SelectionConfig
    from advcoreset.coreset.select import measures_error
    from advcoreset.selection import build_selector

    def auto(method: str) -> bool:
        return measures_error("auto", build_selector(SelectionConfig(method=method, interval=1), 0))

    assert auto("random") and auto("random_fixed") and not auto("rs2") and not auto("full")
    assert not auto("craig")  # its solver's own gradients give the error
    rs2 = build_selector(SelectionConfig(method="rs2", interval=1), 0)
    assert measures_error(True, rs2) and not measures_error(False, build_selector(SelectionConfig(), 0))
    with pytest.raises(ConfigError, match="selection.measure_error"):
        load_config(None, ["selection.measure_error=sometimes"])
