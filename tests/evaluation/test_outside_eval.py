"""``advcoreset eval --model``: an outside classifier gives the numbers ``evaluate`` gives in Python, a
shape / class mismatch is one error before any attack, and a run with a foreign model points to --model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import advcoreset.evaluation.outside as outside
from advcoreset.checkpoint import save_atomic
from advcoreset.cli import main
from advcoreset.config import Config
from advcoreset.evaluation import evaluate
from advcoreset.evaluation.outside import build_outside_model, eval_images

tests_helpers = pytest.importorskip("tests_helpers")

ARGS = ["--data", "digits", "--norm", "linf", "--eps", "0.1", "--n", "60", "--pgd-steps", "5", "--restarts", "2",
        "--autoattack", "--aa-version", "fast", "--progress", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained():
    return tests_helpers.trained_digits_mlp()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_cli_matches_python_evaluate(tmp_path, trained, fmt):
    weights = tmp_path / f"w.{fmt}"
    state = trained.state_dict()
    if fmt == "safetensors":
        save_file(state, str(weights))
    else:
        torch.save({"model": state, "epoch": 3}, weights)  # a checkpoint-like dict is accepted
    out = tmp_path / "eval.json"
    torch.manual_seed(7)
    assert main(["eval", "--model", "tests_helpers:factory", "--weights", str(weights), *ARGS, "-o", str(out)]) == 0
    got = json.loads(out.read_text())

    torch.manual_seed(7)  # same RNG stream: factory() init, then PGD's random starts
    model = build_outside_model("tests_helpers:factory", weights)
    test = eval_images("digits", None, 60)
    ref = evaluate(model, test.images, test.labels, norm="linf", eps=0.1, pgd_steps=5, pgd_alpha=None,
                   pgd_restarts=2, autoattack=True, aa_version="fast", device="cpu")
    for key in ("clean_acc", "pgd5_acc", "autoattack_acc"):
        assert got[key] == ref[key], key
    assert got["n_test"] == 60 and got["model"] == "tests_helpers:factory"
    # the trained model is neither trivially robust nor useless, so the comparison means something
    assert ref["clean_acc"] > 0.8 and ref["pgd5_acc"] < ref["clean_acc"]


@pytest.mark.parametrize("factory, expected", [("tests_helpers:five_classes", "10 classes"),
                                               ("tests_helpers:cifar_sized", "cannot take digits images")])
def test_mismatch_is_one_error_before_any_attack(tmp_path, monkeypatch, capsys, factory, expected):
    weights = tmp_path / "w.safetensors"
    save_file(tests_helpers.__dict__[factory.split(":")[1]]().state_dict(), str(weights))

    def no_attack(*a, **k):
        raise AssertionError("an attack ran before the mismatch was reported")

    monkeypatch.setattr(outside, "evaluate", no_attack)
    assert main(["eval", "--model", factory, "--weights", str(weights), *ARGS]) == 2  # bad input
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_weights_that_do_not_fit_name_the_file(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_file(tests_helpers.five_classes().state_dict(), str(weights))
    assert main(["eval", "--model", "tests_helpers:factory", "--weights", str(weights), *ARGS]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_eval_of_a_run_with_a_foreign_model_points_to_model_flag(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config()  # a run of the Python API with the user's own module keeps model.name at its default
    cfg.save(run / "config.yaml")
    save_atomic({"model": tests_helpers.factory().state_dict()}, run / "last.pt")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "KeyError" not in err


def test_eval_needs_a_run_or_a_model(capsys):
    assert main(["eval"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--model", "tests_helpers:factory", "--data", "digits"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_self_bound_perceptual_needs_feature_maps_before_any_attack(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "w.safetensors"
    save_file(tests_helpers.factory().state_dict(), str(weights))
    monkeypatch.setattr(outside, "evaluate", lambda *a, **k: pytest.fail("an attack ran first"))
    assert main(["eval", "--model", "tests_helpers:factory", "--weights", str(weights), *ARGS, "--perceptual"]) == 2
    assert "feature_maps" in capsys.readouterr().err


@pytest.mark.parametrize("eps", ["5", "nan", "inf", "0", "-0.1"])
def test_an_impossible_radius_is_refused_before_any_attack(tmp_path, trained, capsys, eps):
    weights = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(weights))
    args = [a if a != "0.1" else eps for a in ARGS]  # --eps EPS, l_inf on [0, 1] pixels
    assert main(["eval", "--model", "tests_helpers:factory", "--weights", str(weights), *args]) == 2
    err = capsys.readouterr().err
    assert f"--eps {float(eps)}" in err and "Traceback" not in err
    assert not (tmp_path / "eval.json").exists()


def test_the_output_may_not_be_the_weights_it_evaluates(tmp_path, trained, capsys):
    weights = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(weights))
    before = weights.read_bytes()
    assert main(["eval", "--model", "tests_helpers:factory", "--weights", str(weights), *ARGS,
                 "-o", str(tmp_path / "." / "w.safetensors")]) == 2
    assert "also an input" in capsys.readouterr().err
    assert weights.read_bytes() == before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--out", str(run), "--set", "data.name=digits", "--set", "data.test_subset=32",
                 "--set", "model.width=8", "--set", "objective.attack.steps=1", "--set", "optim.epochs=1",
                 "--set", "eval.pgd_steps=1", "--set", "progress=none", "--set", "selection.method=full"]) == 0
    return run


@pytest.mark.parametrize("name", ["last.pt", "config.yaml", "results.json", "model.safetensors"])
def test_an_eval_never_writes_over_the_runs_own_files(tmp_path, tiny_run, capsys, name):
    """eval RUN --output RUN/<a file of the run> is refused before any attack and the file is untouched."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / name).read_bytes()
    capsys.readouterr()
    assert main(["eval", str(run), "--output", str(run / name), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert f"the run's own {name}" in err and "Traceback" not in err
    assert (run / name).read_bytes() == before


@pytest.mark.parametrize("how", ["in-process", "python -m advcoreset"])
def test_a_stray_module_in_the_working_folder_never_runs(tmp_path, trained, monkeypatch, how):
    """A safetensors.py (or torch.py) in the working folder is not imported in place of the installed
    package, while the user's own --model module there is still found."""
    import subprocess
    import sys

    weights = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(weights))
    marker = tmp_path / "pwned"
    for stray in ("safetensors", "torch"):
        (tmp_path / f"{stray}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "my_nets.py").write_text("import tests_helpers\n\ndef build():\n    return tests_helpers.factory()\n")
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--model", "my_nets:build", "--weights", str(weights), *ARGS, "-o", str(tmp_path / "e.json")]
    if how == "in-process":
        # as the console script runs: the working folder not on the path (pytest may have put '' there)
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
        for name in ("safetensors", "safetensors.torch"):  # imported afresh, as in a new process
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delitem(sys.modules, "my_nets", raising=False)
        assert main(argv) == 0
    else:
        env = {"PYTHONPATH": str(Path(tests_helpers.__file__).parent), "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-m", "advcoreset", *argv], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 60
