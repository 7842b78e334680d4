"""Nothing lost (issue 11): AutoAttack with everything broken, a failed final evaluation, --resume on a finished
or half-logged run, a second writer, a killed bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from advcoreset.checkpoint import load_checkpoint
from advcoreset.cli import main
from advcoreset.training.run_folder import lock_holder, run_lock
from advcoreset.training.trainer import Trainer

TINY = ["--set", "data.name=digits", "--set", "data.test_subset=32", "--set", "model.width=8",
        "--set", "objective.attack.steps=1", "--set", "optim.epochs=2", "--set", "eval.pgd_steps=1",
        "--set", "eval.every=0", "--set", "progress=none", "--set", "threads=1"]


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _epochs_and_finals(run: Path) -> tuple[list[int], int]:
    recs = _records(run)
    return [r["epoch"] for r in recs if r["kind"] == "epoch"], sum(r["kind"] == "final" for r in recs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fin") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_autoattack_reports_zero_when_every_image_is_already_broken() -> None:
    """A model wrong on every image: no attack has anything left to attack, and 0% is reported."""
    from advcoreset.evaluation.autoattack import AutoAttackBudgets, autoattack_robust_mask

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0))  # always class 9
    images, labels = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    robust, res = autoattack_robust_mask(model, images, labels, norm="linf", eps=0.1, version="fast",
                                         budgets=AutoAttackBudgets(apgd_steps=2, apgdt_steps=2, target_classes=2))
    assert not robust.any() and res["autoattack_acc"] == 0.0 and res["autoattack"]["clean_acc"] == 0.0
    assert [a["robust_after"] for a in res["autoattack"]["attacks"]] == [0.0, 0.0]


def test_training_that_ends_with_everything_broken_writes_results(tmp_path: Path) -> None:
    """The issue's repro: eps 1 AutoAttack at the end of a standard run breaks every image; 0% is written."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "--set", "objective.name=standard", "--set", "objective.attack.eps=1",
            "--set", "eval.autoattack=true", "--set", "eval.autoattack_n=8", "--set", "eval.autoattack_version=fast",
            "--set", "eval.autoattack_targets=2", "--set", "optim.epochs=1"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["test_autoattack_acc"] == 0.0


def test_failed_final_evaluation_keeps_the_model_and_resume_reruns_only_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    original = Trainer.evaluate

    def failing(self, final=False, model=None):
        if final:
            raise OSError(28, "No space left on device")
        return original(self, final, model)

    monkeypatch.setattr(Trainer, "evaluate", failing)
    assert main(["train", "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "last.pt" in err and "Traceback" not in err
    assert not (out / "results.json").exists()
    trained = load_checkpoint(out / "last.pt")
    assert trained["epoch"] == 2
    monkeypatch.setattr(Trainer, "evaluate", original)
    assert main(["train", "--out", str(out), "--resume"]) == 0
    after = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(trained["model"][k], after[k]) for k in after)  # nothing was trained again
    assert _epochs_and_finals(out) == ([1, 2], 1)
    assert json.loads((out / "results.json").read_text())["kind"] == "final"


def test_resume_on_a_finished_run_changes_nothing(tmp_path: Path, finished: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "finished run" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert _epochs_and_finals(run) == ([1, 2], 1)


@pytest.mark.parametrize("damage", ["partial_last_line", "final_logged_results_lost"])
def test_resume_after_a_crash_at_the_end_logs_one_final(tmp_path: Path, finished: Path, damage: str) -> None:
    """A kill mid-write of the log (a partial last line) or between the final record and results.json: resume
    reruns the final evaluation once, and the log holds each epoch and one final record."""
    run = _copy(finished, tmp_path / "run")
    (run / "results.json").unlink()
    if damage == "partial_last_line":
        text = (run / "metrics.jsonl").read_text()
        (run / "metrics.jsonl").write_text(text[: text.rindex('{"kind": "final"')] + '{"kind": "fin')
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert _epochs_and_finals(run) == ([1, 2], 1)


def test_a_second_writer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with run_lock(out):
        assert main(["train", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "in use" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.slow
def test_killed_bench_takes_its_child_along_and_resumes_exactly(tmp_path: Path) -> None:
    """kill -9 of the bench mid-run: its training child dies too (no second writer later), and a rerun resumes
    the run to the same weights as an uninterrupted training, each epoch logged once."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: kill\nseeds: [0]\nmethods: [full]\nthreads: 1\n"
                    "base: {data: {name: digits, test_subset: 16, train_subset: 512}, model: {width: 8},\n"
                    "       optim: {epochs: 5, batch_size: 64}, eval: {pgd_steps: 1, every: 0},\n"
                    "       objective: {attack: {steps: 1}}}\n"
                    "objectives:\n  pgd: {objective: {name: pgd}}\n")
    out = tmp_path / "out"
    run = out / "runs" / "pgd" / "full-s0"
    cmd = [sys.executable, "-m", "advcoreset.cli", "bench", str(spec), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.05)
    child = lock_holder(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert child is not None and child > 0, "the training child should hold its run folder's lock"
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the training child outlived the killed bench"
    killed_at = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= killed_at < 5, "the kill should land mid-run"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "advcoreset.cli", "train", "--config", str(run.parent / "full-s0.yaml"),
                    "--out", str(ref)], check=True, capture_output=True)
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _epochs_and_finals(run) == (list(range(1, 6)), 1)
