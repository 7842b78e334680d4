"""Checkpoints and model files are checked against the run they are used with before evaluation, export or
resume (issue 26): non-finite weights, a bad normalisation, another dataset's classes or channels, a damaged
random-number state, a non-tensor entry, a bad ``model.json``. Each is one ``error:`` line naming the file
(exit 2, a ``CheckpointError`` in Python), and no file changes."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from advcoreset.checkpoint import check_resumable, load_checkpoint
from advcoreset.cli import main
from advcoreset.evaluation.outside import build_outside_model
from advcoreset.export import load_model
from advcoreset.safeload import CheckpointError, check_coreset_state, check_state_dict

TINY = ["--set", "data.name=digits", "--set", "data.test_subset=32", "--set", "model.width=8",
        "--set", "objective.attack.steps=1", "--set", "optim.epochs=1", "--set", "eval.pgd_steps=1",
        "--set", "eval.every=0", "--set", "progress=none", "--set", "selection.method=full", "--set", "threads=1"]

Damage = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished digits run (small_cnn of width 8: 1 channel, 10 classes), trained once."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Path -> content hash of every file under ``root`` but the run folder's lock (its holder's pid)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def copy_run(finished: Path, tmp_path: Path, damage: Damage | None = None, file: str = "last.pt") -> Path:
    """A copy of the finished run, without results.json (so --resume restores last.pt), with ``damage`` applied
    to the checkpoint ``file`` (made from last.pt)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "results.json").unlink()
    if damage is not None:
        ckpt = torch.load(run / "last.pt", weights_only=True)
        damage(ckpt)
        torch.save(ckpt, run / file)
    return run


def command(kind: str, run: Path, tmp_path: Path) -> list[str]:
    checkpoint = "best" if kind.endswith("best") else "last"
    if kind.startswith("eval"):
        return ["eval", str(run), "--n", "8", "--checkpoint", f"{checkpoint}.pt"]
    if kind.startswith("export"):
        return ["export", str(run), "--out", str(tmp_path / "exported"), "--checkpoint", checkpoint]
    return ["train", "--out", str(run), "--resume"]


def refused(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; assert exit 2, one error line, no traceback and no file changed under ``tmp_path``.
    Returns the error line."""
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    errors = [ln for ln in (out + err).splitlines() if "error:" in ln]
    assert code == 2, out + err
    assert len(errors) == 1 and "Traceback" not in out + err, out + err
    assert snapshot(tmp_path) == before, "a file changed"
    return errors[0]


def set_(key: str, value: torch.Tensor) -> Damage:
    return lambda ckpt: ckpt["model"].__setitem__(key, value)


def fill(key: str, value: float, index: tuple[int, ...] | None = None) -> Damage:
    def damage(ckpt: dict[str, Any]) -> None:
        t = ckpt["model"][key]
        if index is None:
            t.fill_(value)
        else:
            t[index] = value
    return damage


COMMANDS = ["eval", "eval-best", "export", "export-best", "resume"]


# ---------------------------------------------------------------------------------- 1. non-finite weights
@pytest.mark.parametrize("kind", COMMANDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused(kind, value, finished, tmp_path, capsys):
    file = "best.pt" if kind.endswith("best") else "last.pt"
    run = copy_run(finished, tmp_path, fill("stages.1.0.weight", value, (0, 0, 0, 0)), file)  # last.pt intact
    line = refused(command(kind, run, tmp_path), tmp_path, capsys)
    assert str(run / file) in line and "'stages.1.0.weight'" in line and "NaN/inf" in line


# ------------------------------------------------------------------------------- 2. bad normalisation
NORMALISATION = {
    "std-zero": fill("std", 0.0), "std-negative": fill("std", -0.3), "std-inf": fill("std", float("inf")),
    "mean-nan": fill("mean", float("nan")), "mean-negative": fill("mean", -1.0),
}


@pytest.mark.parametrize("kind", ["eval", "export", "resume"])
@pytest.mark.parametrize("case", NORMALISATION, ids=list(NORMALISATION))
def test_bad_normalisation_is_refused(kind, case, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, NORMALISATION[case])
    line = refused(command(kind, run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and f"normalisation {case.split('-')[0]}" in line


# ---------------------------------------------------------------------- 3. another dataset's classes/channels
def five_classes(ckpt: dict[str, Any]) -> None:
    ckpt["model"]["head.weight"] = ckpt["model"]["head.weight"][:5].clone()
    ckpt["model"]["head.bias"] = ckpt["model"]["head.bias"][:5].clone()


def three_channels(ckpt: dict[str, Any]) -> None:
    m = ckpt["model"]
    m["mean"], m["std"] = m["mean"].repeat(1, 3, 1, 1), m["std"].repeat(1, 3, 1, 1)
    m["stages.0.0.weight"] = m["stages.0.0.weight"].repeat(1, 3, 1, 1)


@pytest.mark.parametrize("kind", ["eval", "export", "resume"])
@pytest.mark.parametrize("damage, have, want", [(five_classes, "5 classes on 1-channel", "10 classes on 1-channel"),
                                                (three_channels, "10 classes on 3-channel", "10 classes on 1-channel")],
                         ids=["5-classes", "3-channels"])
def test_other_classes_or_channels_are_refused(kind, damage, have, want, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, damage)
    line = refused(command(kind, run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and f"model of {have} images" in line and f"has {want} images" in line


# ----------------------------------------------------------------- 4. damaged RNG state, non-tensor entries
def rng(key: str, value: Any) -> Damage:
    return lambda ckpt: ckpt["rng"].__setitem__(key, value)


RNG = {
    "torch-empty": rng("torch", torch.empty(0, dtype=torch.uint8)),
    "torch-short": rng("torch", torch.get_rng_state()[:100]),
    "torch-float": rng("torch", torch.get_rng_state().float()),
    "torch-list": rng("torch", [1, 2, 3]),
    "data-empty": rng("data", torch.empty(0, dtype=torch.uint8)),
    "data-long": rng("data", torch.cat([torch.Generator().get_state()] * 2)),
    "data-garbage": rng("data", torch.zeros_like(torch.Generator().get_state())),
    "data-missing": lambda ckpt: ckpt["rng"].pop("data"),
    "rng-list": lambda ckpt: ckpt.__setitem__("rng", [1, 2]),
}


@pytest.mark.parametrize("case", RNG, ids=list(RNG))
def test_resume_refuses_a_damaged_rng_state(case, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, RNG[case])
    line = refused(command("resume", run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and "rng" in line and "cannot be resumed" in line


@pytest.mark.parametrize("kind", ["eval", "export", "resume"])
def test_a_non_tensor_model_entry_is_refused(kind, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, set_("head.bias", [0.0] * 10))  # type: ignore[arg-type]
    line = refused(command(kind, run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and "'head.bias' is a list" in line


def test_trainer_checks_before_restoring(finished, tmp_path, monkeypatch):
    """The trainer itself (train(cfg, resume=True), no CLI) refuses before any state is restored."""
    import advcoreset.training.run_folder as run_folder
    import advcoreset.training.trainer as trainer_mod
    from advcoreset.config import Config
    from advcoreset.config_checks import validate

    run = copy_run(finished, tmp_path, rng("data", torch.empty(0, dtype=torch.uint8)))

    def no_restore(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("RNG state restored before the checkpoint was checked")

    monkeypatch.setattr(run_folder, "set_rng_state", no_restore)
    before = snapshot(tmp_path)
    cfg = validate(Config.from_yaml(run / "config.yaml"))
    cfg.out_dir = str(run)
    with pytest.raises(CheckpointError, match=r"rng\['data'\]") as info:
        trainer_mod.train(cfg, resume=True)
    assert str(run / "last.pt") in str(info.value) and snapshot(tmp_path) == before
    with pytest.raises(CheckpointError, match="last.pt"):  # the function the CLI calls refuses it as well
        check_resumable(load_checkpoint(run / "last.pt"), run / "last.pt")


# ------------------------------------------------------------- 4b. weights of a complex, integer or bool dtype
NOT_FLOATING = {"complex": torch.complex64, "int64": torch.int64, "int8": torch.int8, "bool": torch.bool}


def retype(key: str, dtype: torch.dtype) -> Damage:
    return lambda ckpt: ckpt["model"].__setitem__(key, ckpt["model"][key].to(dtype))


@pytest.mark.parametrize("kind", ["eval", "export", "resume"])
@pytest.mark.parametrize("dtype", NOT_FLOATING, ids=list(NOT_FLOATING))
def test_weights_of_a_non_floating_dtype_are_refused(kind, dtype, finished, tmp_path, capsys):
    """load_state_dict casts them silently into the float model (an imaginary part dropped, 0/1 for bool)."""
    run = copy_run(finished, tmp_path, retype("stages.1.0.weight", NOT_FLOATING[dtype]))
    line = refused(command(kind, run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and "'stages.1.0.weight'" in line and str(NOT_FLOATING[dtype]) in line


@pytest.mark.parametrize("key", ["std", "mean"])
def test_a_normalisation_of_a_non_floating_dtype_is_refused(key, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, retype(key, torch.complex64))
    line = refused(command("eval", run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and f"normalisation {key}" in line and "complex64" in line


@pytest.mark.parametrize("dtype", NOT_FLOATING, ids=list(NOT_FLOATING))
def test_a_model_file_of_a_non_floating_dtype_is_refused(dtype, finished, tmp_path):
    """The export's model.safetensors (load_model) and a --weights file of an outside model."""
    folder = exported(finished, tmp_path, lambda meta: None)
    weights = load_file(str(folder / "model.safetensors"))
    weights["head.weight"] = weights["head.weight"].to(NOT_FLOATING[dtype])
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'head\.weight' is torch\.") as info:
        load_model(folder)
    assert str(folder / "model.safetensors") in str(info.value) and len(str(info.value).splitlines()) == 1
    import tests_helpers

    outside = tmp_path / "w.safetensors"
    state = tests_helpers.factory().state_dict()
    name = next(k for k, v in state.items() if v.dim() == 2)
    state[name] = state[name].to(NOT_FLOATING[dtype])
    save_file(state, str(outside))
    with pytest.raises(CheckpointError, match=rf"--weights {outside}: tensor '{name}'"):
        build_outside_model("tests_helpers:factory", outside)


def test_integer_buffers_and_other_float_precisions_still_load(tmp_path):
    """The kind of the model's own entry decides: BatchNorm's num_batches_tracked is integer, float16 weights
    load into a float32 model; a running mean of integers does not."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert state["1.num_batches_tracked"].dtype == torch.int64
    check_state_dict(model, state, tmp_path / "w.pt")
    model.load_state_dict(state)
    state["1.running_mean"] = state["1.running_mean"].long()
    with pytest.raises(CheckpointError, match=r"w\.pt: tensor '1\.running_mean' is torch\.int64 \(integer\)"):
        check_state_dict(model, state, tmp_path / "w.pt")


# ----------------------------------------------------------------------------- 4c. a damaged saved coreset
CORESET = {
    "junk": [1, 2],
    "string": "indices",
    "float-indices": {"indices": torch.tensor([0.5]), "weights": torch.ones(1)},
    "list-indices": {"indices": [0, 1], "weights": torch.ones(2)},
    "int-weights": {"indices": torch.tensor([0, 1]), "weights": torch.ones(2, dtype=torch.long)},
    "mismatch": {"indices": torch.tensor([0, 1, 2]), "weights": torch.ones(2)},
    "two-dim": {"indices": torch.zeros(2, 2, dtype=torch.long), "weights": torch.ones(2, 2)},
    "negative": {"indices": torch.tensor([-1, 0]), "weights": torch.ones(2)},
    "nan-weights": {"indices": torch.tensor([0, 1]), "weights": torch.tensor([1.0, float("nan")])},
    "negative-weights": {"indices": torch.tensor([0, 1]), "weights": torch.tensor([1.0, -2.0])},
    "no-weights": {"indices": torch.tensor([0, 1])},
    "beyond-the-data": {"indices": torch.tensor([0, 10**6]), "weights": torch.ones(2)},
}


@pytest.mark.parametrize("case", CORESET, ids=list(CORESET))
def test_resume_refuses_a_damaged_coreset_naming_the_checkpoint(case, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, lambda ckpt: ckpt.__setitem__("coreset", CORESET[case]))
    line = refused(command("resume", run, tmp_path), tmp_path, capsys)
    assert str(run / "last.pt") in line and "'coreset'" in line and "from scratch" in line


def test_a_coreset_beyond_the_runs_examples_is_refused_naming_the_checkpoint(tmp_path):
    entry = {"indices": torch.tensor([0, 10**6]), "weights": torch.ones(2)}
    check_coreset_state(entry, tmp_path / "last.pt")  # the form alone is right
    check_coreset_state(None, tmp_path / "last.pt", 10)  # no selection saved (a full run, a warm start)
    with pytest.raises(CheckpointError, match=r"last\.pt cannot be resumed: its 'coreset' entry .* 1000000, "
                                              r"not in \[0, 100\)") as info:
        check_coreset_state(entry, tmp_path / "last.pt", num_examples=100)
    assert "delete" in str(info.value) and "from scratch" in str(info.value)


# ------------------------------------------------------------------------------------------- 5. model.json
def exported(finished: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    folder = tmp_path / "exported"
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        shutil.copy(finished / name, folder)
    meta = json.loads((folder / "model.json").read_text())
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def arg(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta["arguments"].__setitem__(key, value)


MODEL_JSON = {
    "unknown-architecture": (lambda meta: meta.__setitem__("architecture", "resnet9000"), "architecture"),
    "architecture-number": (lambda meta: meta.__setitem__("architecture", 7), "architecture"),
    "extra-argument": (arg("depth", 3), "arguments.depth"),
    "huge-width": (arg("width", 10**7), "width"),
    "enormous-width": (arg("width", 10**30), "arguments"),
    "zero-classes": (arg("num_classes", 0), "arguments.num_classes"),
    "negative-classes": (arg("num_classes", -3), "arguments.num_classes"),
    "string-classes": (arg("num_classes", "10"), "arguments.num_classes"),
    "zero-width": (arg("width", 0), "arguments.width"),
    "std-zero": (arg("std", [0.0]), "arguments.std"),
    "mean-two-channels": (arg("mean", [0.1, 0.2]), "arguments.mean"),
    "no-arguments": (lambda meta: meta.pop("arguments"), "arguments"),
    "input-shape": (lambda meta: meta.__setitem__("input_shape", [3, 8, 8]), "input_shape"),
}


@pytest.mark.parametrize("case", MODEL_JSON, ids=list(MODEL_JSON))
def test_load_model_refuses_a_bad_model_json(case, finished, tmp_path):
    edit, field = MODEL_JSON[case]
    folder = exported(finished, tmp_path, edit)
    before = snapshot(tmp_path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder / "model.json") in message and field in message and len(message.splitlines()) == 1
    assert time.perf_counter() - start < 5, "nothing of the described size is allocated"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"], ids=["not-json", "not-an-object"])
def test_load_model_refuses_an_unreadable_model_json(content, finished, tmp_path):
    folder = exported(finished, tmp_path, lambda meta: None)
    (folder / "model.json").write_text(content)
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(folder)


def test_load_model_refuses_non_finite_or_mismatched_weights(finished, tmp_path):
    folder = exported(finished, tmp_path, lambda meta: None)
    weights = load_file(str(folder / "model.safetensors"))
    weights["head.bias"][3] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*'head\.bias'.*NaN"):
        load_model(folder)
    other = exported(finished, tmp_path / "b", arg("num_classes", 5))  # model.json of 5 classes, weights of 10
    with pytest.raises(CheckpointError, match=r"model\.safetensors holds a model of 10 classes.*model\.json has 5"):
        load_model(other)


# ------------------------------------------------------------------------------- good files still work
def test_good_checkpoint_evaluates_exports_and_resumes(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    shutil.copy(run / "last.pt", run / "best.pt")
    for kind in COMMANDS:
        assert main(command(kind, run, tmp_path)) == 0, (kind, capsys.readouterr())
        if kind.startswith("export"):
            model = load_model(tmp_path / "exported")
            ref = load_model(finished)
            x = torch.rand(4, 1, 8, 8)
            with torch.no_grad():
                assert torch.equal(model(x), ref(x))
            shutil.rmtree(tmp_path / "exported")
    assert json.loads((run / "results.json").read_text())["kind"] == "final"  # the resume finished the run
    ckpt = load_checkpoint(run / "last.pt")
    check_resumable(ckpt, run / "last.pt")
