"""The run-folder module: one writer at a time (a lock that dies with its holder), atomic results, a finished
run recognised, writability checked before work, a bench child that dies with its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from advcoreset.errors import one_line
from advcoreset.training.run_folder import (
    PARENT_ENV,
    RunFolderError,
    check_output_file,
    check_start,
    check_writable,
    final_evaluation,
    finished_results,
    lock_holder,
    run_lock,
    write_json_atomic,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by its parent) still answers kill(0)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _wait(cond, seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_lock_refuses_a_second_writer_and_is_released(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        assert lock_holder(tmp_path / "run") == os.getpid()
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()}"), run_lock(tmp_path / "run"):
            pass
    assert lock_holder(tmp_path / "run") is None
    with run_lock(tmp_path / "run"):  # free again
        pass


def test_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    """kill -9 leaves the lock file but not the lock: the next writer is not blocked by a stale lock."""
    code = f"from advcoreset.training.run_folder import run_lock\nimport time\nwith run_lock({str(tmp_path)!r}):\n" \
           "    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert _wait(lambda: lock_holder(tmp_path) == proc.pid)
        with pytest.raises(RunFolderError, match="in use"), run_lock(tmp_path):
            pass
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / ".lock").exists() and lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        pass


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A bench child (PARENT_ENV set) ends when its parent is killed, instead of running on as an orphan."""
    pid_file = tmp_path / "child.pid"
    child = textwrap.dedent(f"""
        import os, time
        from advcoreset.training.run_folder import die_with_parent
        die_with_parent()
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}
        subprocess.Popen([sys.executable, "-c", {child!r}], env=env)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        assert _wait(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit())
        child_pid = int(pid_file.read_text())
        assert _alive(child_pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _wait(lambda: not _alive(child_pid), 10), "the child outlived its killed parent"


def test_atomic_json_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # fails mid-serialisation
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left behind


def test_writability_checks(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        check_writable(tmp_path / "f")
    with pytest.raises(RunFolderError, match="not writable"):
        check_writable(tmp_path / "f" / "sub")
    assert check_writable(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    with pytest.raises(RunFolderError, match="is a folder"):
        check_output_file(tmp_path / "a")
    with pytest.raises(RunFolderError, match="--output"):
        check_output_file(tmp_path / "f" / "eval.json")


def test_finished_and_start_checks(tmp_path: Path) -> None:
    assert finished_results(tmp_path) is None
    check_start(tmp_path, resume=False)
    with pytest.raises(RunFolderError, match="--resume"):
        check_start(tmp_path, resume=True)
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="already holds a run"):
        check_start(tmp_path, resume=False)
    (tmp_path / "results.json").write_text("{not json")
    assert finished_results(tmp_path) is None
    (tmp_path / "results.json").write_text(json.dumps({"kind": "final", "test_clean_acc": 0.5}))
    assert finished_results(tmp_path) == {"kind": "final", "test_clean_acc": 0.5}


def test_final_evaluation_failure_says_how_to_resume(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info, final_evaluation(tmp_path, 3):
        raise OSError(28, "No space left on device")
    assert any("--resume" in n and "epoch 3" in n for n in info.value.__notes__)


def test_unsafe_advice_is_never_passed_on() -> None:
    """torch's refusal message tells the user to retry with weights_only=False; the one-line form drops that
    sentence and keeps the rest."""
    msg = ("Weights only load failed. This file can still be loaded, to do so you have two options, do those "
           "steps only if you trust the source of the checkpoint. (1) In PyTorch 2.6, we changed the default "
           "value of the `weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` "
           "with `weights_only` set to `False` will likely succeed.\n\nUnsupported global: posix.system")
    out = one_line(msg)
    assert "weights_only" not in out and "\n" not in out and "Unsupported global: posix.system" in out


def test_an_unwritable_folder_is_reported_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """What a read-only folder does (simulated, since root writes through permissions): eval stops before
    evaluating, names the folder and says to write elsewhere with --output."""
    import advcoreset.evaluation.run as run_mod
    from advcoreset import cli
    from advcoreset.training import run_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the evaluation ran although its result could not be written")

    monkeypatch.setattr(run_folder.tempfile, "mkstemp", denied)
    monkeypatch.setattr(run_mod, "evaluate_run", must_not_run)
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run} is not writable (Permission denied)" in err and "--output" in err
    assert cli.main(["train", "--out", str(tmp_path / "new"), "--set", "data.name=digits"]) == 2
    assert f"run folder {tmp_path / 'new'} is not writable" in capsys.readouterr().err


def test_json_results_get_the_users_umask_not_0600(tmp_path):
    import os
    import stat

    from advcoreset.training.run_folder import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_every_file_of_a_run_is_readable_by_others_under_umask_022(tmp_path):
    import os
    import stat

    from advcoreset.cli import main

    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert main(["train", "--out", str(run), "--set", "data.name=digits", "--set", "data.test_subset=32",
                     "--set", "model.width=8", "--set", "objective.attack.steps=1", "--set", "optim.epochs=1",
                     "--set", "eval.pgd_steps=1", "--set", "progress=none", "--set", "selection.method=full"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir() if p.is_file()}
    assert {"results.json", "model.safetensors", "model.json", "last.pt"} <= set(modes)
    assert all(m & 0o044 == 0o044 for m in modes.values()), modes
