"""Progress: line mode prints counted status lines (at most one per interval), none prints nothing; the
selection pass and AutoAttack report through it."""

from __future__ import annotations

import io
import re

import pytest
import torch

from advcoreset.config import Config
from advcoreset.evaluation.autoattack import AutoAttackBudgets, autoattack_accuracy, autoattack_robust_mask
from advcoreset.progress import make_progress
from advcoreset.training.trainer import Trainer


def lines(buf: io.StringIO) -> list[str]:
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


def test_line_mode_counts_and_notes():
    buf = io.StringIO()
    with make_progress("line", interval=0, stream=buf)("step", 4) as task:
        task.update(1)
        task.update(3, note="robust 2/4")
    out = lines(buf)
    assert out[0].startswith("step: 1/4 (25%)") and "left" in out[0]
    assert out[1].startswith("step: 4/4 (100%)") and out[1].endswith("| robust 2/4")
    assert out[-1].endswith("(done)")


def test_line_mode_waits_for_the_interval_and_none_is_silent():
    buf = io.StringIO()
    with make_progress("line", interval=3600, stream=buf)("step", 100) as task:
        for _ in range(100):
            task.update(1)
    assert buf.getvalue() == ""
    with make_progress("none", stream=buf)("step", 2) as task:
        task.update(2)
        task.write("hidden")
    assert buf.getvalue() == ""
    with pytest.raises(ValueError, match="progress"):
        make_progress("loud")


def test_autoattack_reports_each_sub_attack_with_the_robust_count():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 5, (12,))
    buf = io.StringIO()
    res = autoattack_accuracy(model, x, y, norm="linf", eps=0.05, version="fast", batch_size=5,
                              budgets=AutoAttackBudgets(apgd_steps=3, apgdt_steps=3, target_classes=2),
                              progress=make_progress("line", interval=0, stream=buf))
    out = lines(buf)
    for name in ("apgd-ce", "apgd-t"):
        assert any(ln.startswith(f"AutoAttack {name}") for ln in out), out
    last = [ln for ln in out if ln.startswith("AutoAttack apgd-t") and "robust" in ln][-1]
    robust = int(re.search(r"robust (\d+)/12", last).group(1))
    assert robust == round(res["autoattack_acc"] * 12)


def test_autoattack_reports_inside_a_chunk_without_changing_the_result():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    x = torch.rand(12, 1, 4, 4)
    y = model(x).argmax(1)  # every image clean-correct: 3 chunks of 5, 5 and 2 for the first sub-attack
    kw = {"norm": "linf", "eps": 0.05, "version": "fast", "batch_size": 5,
          "budgets": AutoAttackBudgets(apgd_steps=3, apgdt_steps=3, target_classes=2)}
    buf = io.StringIO()
    loud, _ = autoattack_robust_mask(model, x, y, progress=make_progress("line", interval=0, stream=buf), **kw)
    beats = [ln for ln in lines(buf) if "model passes" in ln]
    # every forward pass of the attack is seen while its chunk runs (3 chunks of 5, 5 and 2 images)
    assert any("chunk 1/3" in ln for ln in beats) and any("chunk 3/3" in ln for ln in beats), beats
    first = [ln for ln in beats if "apgd-ce" in ln and "chunk 1/" in ln]
    passes = [int(re.search(r"(\d+) model passes", ln).group(1)) for ln in first]
    assert passes == list(range(1, len(passes) + 1)) and passes[-1] >= 3
    assert not model._forward_hooks  # the counter is removed afterwards
    quiet, _ = autoattack_robust_mask(model, x, y, **kw)
    assert torch.equal(quiet, loud) and 0 < int(loud.sum()) < 12  # only observed: the same points fooled


def test_selection_pass_reports_attack_pass_and_solver(tmp_path):
    cfg = Config.from_dict({"data": {"name": "digits", "train_subset": 150, "test_subset": 32},
                            "model": {"width": 4}, "objective": {"attack": {"steps": 1}},
                            "selection": {"method": "craig", "fraction": 0.2}, "optim": {"batch_size": 64},
                            "progress": "line", "threads": 1, "out_dir": str(tmp_path)})
    tr = Trainer(cfg)
    buf = io.StringIO()
    tr.progress = make_progress("line", interval=0, stream=buf)
    sel, _ = tr.loader.choose()
    out = lines(buf)
    attack = [ln for ln in out if ln.startswith("selection: attack pass")]
    assert [ln.split(" (")[0].split(": ")[-1] for ln in attack[:3]] == ["64/150", "128/150", "150/150"]
    assert any(ln.startswith("selection: craig solver") and f"{sel.indices.numel()} of 150 chosen" in ln
               for ln in out)


def test_every_training_epoch_reports_its_batches(tmp_path):
    """A training epoch is a long step too: in line mode it reports batches done / total with the running
    loss, and the last line of each epoch counts all of its batches."""
    cfg = Config.from_dict({"data": {"name": "digits", "train_subset": 300, "test_subset": 32},
                            "model": {"width": 4}, "objective": {"attack": {"steps": 1}},
                            "selection": {"method": "full"}, "optim": {"batch_size": 64, "epochs": 2},
                            "eval": {"every": 0, "pgd_steps": 1}, "progress": "line", "threads": 1,
                            "out_dir": str(tmp_path)})
    tr = Trainer(cfg)
    buf = io.StringIO()
    tr.progress = make_progress("line", interval=0, stream=buf)
    tr.run()
    out = lines(buf)
    for e in (1, 2):
        mine = [ln for ln in out if ln.startswith(f"epoch {e}/2 [full]: ")]
        assert [ln.split(": ")[1].split(" (")[0] for ln in mine[:5]] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
        assert re.search(r"loss \d+\.\d{3}, adv-acc \d\.\d{3}, lr ", mine[-1])
