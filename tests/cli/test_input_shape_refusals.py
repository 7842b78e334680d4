"""Bad input shapes and meaningless combinations refused before any work (issue 26).

YAML shapes (duplicate keys at any depth, non-string keys, absurd nesting or size) in config files and bench
specs; a warm start as long as the run under a coreset label; bench fractions that share a run folder; a bench
``world_size`` the machine cannot run; one-class training data; resuming a finished run to another length.
Each refusal is one ``error:`` line (exit 2) naming the input, and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import advcoreset
from advcoreset import bench
from advcoreset.bench.spec import SpecError, load_spec
from advcoreset.cli import main
from advcoreset.config import Config, ConfigError
from advcoreset.config_checks import load_config
from advcoreset.data.formats import DataError
from advcoreset.training.preflight import check_against_data
from advcoreset.training.run_folder import RunFolderError, finished_results

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "data.name=digits", "--set", "data.test_subset=32", "--set", "model.width=8",
        "--set", "objective.attack.steps=1", "--set", "optim.epochs=1", "--set", "eval.pgd_steps=1",
        "--set", "eval.every=0", "--set", "progress=none", "--set", "threads=1",
        "--set", "selection.method=gradmatch"]
FULL = [*TINY, "--set", "selection.method=full"]
GOOD_SPEC = """name: t
seeds: [0]
methods: [full, random]
fractions: [0.3]
base: {data: {name: digits, test_subset: 32}, model: {width: 8}, optim: {epochs: 2}}
objectives:
  pgd:
    objective: {name: pgd}
"""


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text, text
    return code, text


def _one_error(text: str) -> str:
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1, text
    return errors[0]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------------------------------ YAML shapes
DEEP = "seed: 0\nobjective: " + "[" * 50 + "]" * 50 + "\n"
BAD_YAML = [
    # id, text, what the message must name
    ("dup-top", "seed: 1\noptim: {epochs: 2}\nseed: 2\n", "'seed'"),
    ("dup-deep", "objective:\n  attack:\n    eps: 0.1\n    steps: 2\n    eps: 0.3\n", "objective.attack.eps"),
    ("dup-section", "optim: {lr: 0.1}\neval: {every: 0}\noptim: {epochs: 3}\n", "'optim'"),
    ("int-key", "1: x\nseed: 0\n", "'1'"),
    ("null-key", "~: x\n", "'~'"),
    ("int-key-deep", "optim:\n  2: 0.1\n", "'2' in optim"),
    ("bool-key", "selection:\n  yes: 3\n", "'yes' in selection"),
    ("deep", DEEP, "nested more than"),
    ("deep-flow", "[" * 200_000, "nested more than"),
    ("recursive-alias", "optim:\n  betas: &b [0.9, *b]\n", "optim.betas"),
    ("huge", "seed: 0\n" + "# padding\n" * 120_000, "larger than"),
]


@pytest.mark.parametrize(("text", "names"), [c[1:] for c in BAD_YAML], ids=[c[0] for c in BAD_YAML])
def test_config_file_shape_refused(text: str, names: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        Config.from_yaml(path)
    assert str(path) in str(e.value) and names in str(e.value)
    assert "\n" not in str(e.value)
    run = tmp_path / "run"
    code, out = _run_cli(["train", "--config", str(path), "--out", str(run), *FULL], capsys)
    line = _one_error(out)
    assert code == 2 and str(path) in line and names in line, out
    assert not run.exists()


@pytest.mark.parametrize(("text", "names"), [
    ("  pgd:\n    objective: {name: trades}\n", "'objectives.pgd'"),
    ("  fast:\n    optim: {epochs: 2, epochs: 3}\n", "objectives.fast.optim.epochs"),
    ("1: x\n", "'1'"),
    ("~: x\n", "'~'"),
    ("deep: " + "{a: " * 50 + "1" + "}" * 50 + "\n", "nested more than"),
], ids=["dup-objective", "dup-deep", "int-key", "null-key", "deep"])
def test_bench_spec_shape_refused(text: str, names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD_SPEC + text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and names in str(e.value)
    run = tmp_path / "out"
    code, out = _run_cli(["bench", str(path), "--out", str(run)], capsys)
    line = _one_error(out)
    assert code == 2 and str(path) in line and names in line, out
    assert not run.exists()


def test_python_tags_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_yaml(path)
    assert not marker.exists()


def test_good_config_with_every_section_loads(tmp_path: Path) -> None:
    cfg = load_config(None, ["seed=3", "objective.attack.eps=0.2", "optim.epochs=5", "eval.every=2",
                             "selection.method=craig", "data.train_subset=100"])
    path = tmp_path / "cfg.yaml"
    cfg.save(path)  # every section and every field, as a run saves it
    assert set(yaml.safe_load(path.read_text())) >= {"data", "model", "objective", "selection", "optim", "eval"}
    assert load_config(path) == cfg
    # merge keys, quoted keys that look like numbers and anchors used elsewhere stay valid YAML shapes
    path.write_text("objective:\n  attack: &a {eps: 0.2, steps: 3}\nselection: {method: full}\n"
                    "eval: {'every': 0}\noptim:\n  betas: &b [0.8, 0.9]\n  <<: {lr: 0.05}\n  lr: 0.01\n")
    cfg = load_config(path)
    assert cfg.objective.attack.eps == 0.2 and cfg.optim.betas == [0.8, 0.9] and cfg.optim.lr == 0.01


def test_every_shipped_config_and_spec_loads(tmp_path: Path) -> None:
    runs, specs = sorted((ROOT / "configs").glob("*.yaml")), sorted((ROOT / "configs" / "bench").glob("*.yaml"))
    assert runs and specs
    for p in runs:
        load_config(p)
    for p in specs:
        bench.expand(bench.load_spec(p), tmp_path)


# ------------------------------------------------------------------------- meaningless combinations
def test_warm_start_as_long_as_the_run_is_labelled_by_what_it_did(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A coreset method whose warm start spans every epoch trains on all data: the run says so (banner,
    results.json), and a bench spec, whose table would label the row by the method, refuses it."""
    run = tmp_path / "run"
    code, out = _run_cli(["train", "--out", str(run), *TINY], capsys)  # gradmatch, warm 1 of 1 epoch
    assert code == 0, out
    assert "selection gradmatch @ 0.3 (never reached: the warm start spans all 1 epochs" in out
    res = json.loads((run / "results.json").read_text())
    assert res["selection_rounds"] == 0 and "no selection round ran" in res["note"]
    ok = tmp_path / "ok"
    code, out = _run_cli(["train", "--out", str(ok), *TINY, "--set", "optim.epochs=2"], capsys)
    res = json.loads((ok / "results.json").read_text())
    assert code == 0 and res["selection_rounds"] == 1 and "note" not in res and "never reached" not in out
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD_SPEC.replace("methods: [full]", "methods: [full, gradmatch]")
                    .replace("optim: {epochs: 2}", "optim: {epochs: 1}"))
    with pytest.raises(SpecError, match=r"warm_epochs 1 >= optim.epochs 1.*no coreset"):
        bench.expand(bench.load_spec(spec), tmp_path / "b")


@pytest.mark.parametrize(("old", "new", "names"), [
    ("fractions: [0.3]", "fractions: [0.1, 0.1000001]", "fractions 0.1 and 0.1000001"),
    ("fractions: [0.3]", "fractions: [0.3, 0.5, 0.3]", "fractions 0.3 and 0.3"),
    ("    objective: {name: pgd}", "    objective: {name: pgd}\n    fractions: [0.25, 0.2500000001]",
     "objectives.pgd.fractions"),
], ids=["top-close", "top-repeat", "objective-close"])
def test_fractions_sharing_a_run_folder_refused(old: str, new: str, names: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD_SPEC.replace(old, new))
    with pytest.raises(SpecError, match="fractions") as e:
        load_spec(path)
    assert names in str(e.value)
    run = tmp_path / "out"
    code, out = _run_cli(["bench", str(path), "--out", str(run)], capsys)
    assert code == 2 and names in _one_error(out) and not run.exists(), out
    path.write_text(GOOD_SPEC.replace("fractions: [0.3]", "fractions: [0.1, 0.3, 0.100001]"))
    assert [r.fraction for r in bench.expand(load_spec(path), tmp_path) if r.fraction] == [0.1, 0.3, 0.100001]


def test_world_size_beyond_the_machine_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "spec.yaml"
    cpu = GOOD_SPEC.replace("optim: {epochs: 2}", "optim: {epochs: 2}, device: cpu")
    path.write_text(cpu + "world_size: 3\n")
    with pytest.raises(SpecError, match="world_size 3") as e:
        load_spec(path)
    assert "2 CPU core" in str(e.value)
    run = tmp_path / "out"
    code, out = _run_cli(["bench", str(path), "--out", str(run)], capsys)
    assert code == 2 and "world_size" in _one_error(out) and not run.exists(), out
    path.write_text(cpu + "world_size: 2\n")
    assert load_spec(path)["world_size"] == 2
    # CUDA runs: the number of devices, not of cores
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    path.write_text(GOOD_SPEC.replace("optim: {epochs: 2}", "optim: {epochs: 2}, device: cuda") + "world_size: 2\n")
    with pytest.raises(SpecError, match="world_size 2 needs 2 CUDA devices"):
        load_spec(path)


def test_one_class_training_data_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, ["selection.method=full"])
    with pytest.raises(DataError, match="training labels are all 3"):
        check_against_data(cfg, torch.full((40,), 3, dtype=torch.int64), (1, 8, 8), 10)
    check_against_data(cfg, torch.tensor([3] * 39 + [4]), (1, 8, 8), 10)  # two classes: fine
    # the command line, on an image folder of one class
    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        (tmp_path / "imgs" / split / "ant").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / "imgs" / split / "ant" / f"{i}.png")
    run = tmp_path / "run"
    code, out = _run_cli(["train", "--out", str(run), *FULL, "--set", "data.name=imagefolder",
                          "--set", f"data.root={tmp_path / 'imgs'}", "--set", "data.test_subset=null",
                          "--set", "device=cpu"], capsys)
    assert code == 2 and "labels" in _one_error(out), out
    assert not any((run / f).exists() for f in ("config.yaml", "last.pt", "metrics.jsonl", "results.json"))


# ---------------------------------------------------------------------------------- finished runs
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(out), *FULL]) == 0
    return out


def test_finished_run_resumed_to_more_epochs_refused(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    assert finished_results(run, 1) is not None and finished_results(run) is not None
    with pytest.raises(RunFolderError, match="finished run.*optim.epochs=3.*new --out"):
        finished_results(run, 3)
    cfg = load_config(run / "config.yaml", [f"out_dir={run}", "optim.epochs=3"])
    with pytest.raises(RunFolderError, match=r"finished run .* start a new --out") as e:
        advcoreset.train(cfg, resume=True)
    assert str(run) in str(e.value) and "\n" not in str(e.value)
    assert _snapshot(run) == before


def test_cli_resume_of_a_finished_run_to_more_epochs_refused(finished_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    code, out = _run_cli(["train", "--out", str(run), "--resume", "--set", "optim.epochs=3"], capsys)
    assert _snapshot(run) == before
    line = _one_error(out)
    assert code == 2 and "finished" in line and "--out" in line and "optim.epochs=3" in line, out


def test_cli_resume_of_a_finished_run_unchanged(finished_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    code, out = _run_cli(["train", "--out", str(run), "--resume"], capsys)
    assert code == 0 and "finished run" in out and "error" not in out, out
    assert _snapshot(run) == before
