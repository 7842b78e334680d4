"""A caller's Dataset and model in train(): every data.* / model.* setting honoured or refused with one line;
config.yaml and model.json record what ran; `advcoreset export` works on such runs (training/given.py)."""

from __future__ import annotations

import json

import pytest
import tests_helpers
import torch
import yaml
from torch.utils.data import TensorDataset

import advcoreset
from advcoreset.cli import main
from advcoreset.config import ConfigError, DataConfig
from advcoreset.config_checks import load_config
from advcoreset.data import load_dataset, prepare_data
from advcoreset.safeload import CheckpointError
from advcoreset.training import Trainer
from advcoreset.training.logging import read_metrics


class Named(TensorDataset):
    """A Dataset with torchvision's ``classes``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> None:
        super().__init__(x, y)
        self.classes = classes


def digits_sets() -> tuple[Named, Named]:
    """scikit-learn's digits as the caller's Datasets: (N, 1, 8, 8) uint8 images, 10 named classes."""
    tr, te = (load_dataset("digits", None, train=split) for split in (True, False))
    return Named(tr.images, tr.labels, tr.classes), Named(te.images, te.labels, te.classes)


def cfg(tmp_path, *extra: str):
    return load_config(None, [
        "objective.attack.steps=1", "selection.method=full", "optim.epochs=2", "optim.batch_size=64",
        "eval.pgd_steps=1", "eval.val_pgd_steps=1", "progress=none", "threads=1", "device=cpu",
        f"out_dir={tmp_path / 'run'}", *extra])


def test_data_settings_apply_to_a_users_dataset_as_to_built_in_data(tmp_path):
    """train_subset, val_size and test_subset pick the very images they pick of the built-in digits (they were
    ignored: the whole Dataset trained and was evaluated); augment crop is the built-in batched crop."""
    train_set, test_set = digits_sets()
    data = ["data.train_subset=300", "data.val_size=50", "data.test_subset=100", "data.augment=crop",
            "data.crop_padding=1"]
    t = Trainer(cfg(tmp_path, *data), train_set=train_set, test_set=test_set)
    want = prepare_data(DataConfig(name="digits", train_subset=300, val_size=50, test_subset=100), seed=0)
    assert torch.equal(t.labels.cpu(), want.train.labels)
    assert want.val is not None and t.run_data.val is not None
    assert torch.equal(t.run_data.val.images, want.val.images)
    assert torch.equal(t.run_data.test[0], want.test.images) and torch.equal(t.run_data.test[1], want.test.labels)
    assert (t.loader.source.padding, t.loader.source.flip) == (1, False)  # type: ignore[attr-defined]
    res = t.run()
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["n_train"] for r in epochs] == [300, 300] and "val_pgd1_acc" in epochs[0]
    assert res["test_n"] == 100


@pytest.mark.parametrize(("setting", "with_model"), [
    ("data.name=mnist", False), ("data.root=/data", False), ("data.image_size=8", False),
    ("data.augment=auto", False), ("model.name=resnet18", True), ("model.width=8", True)])
def test_settings_a_users_parts_cannot_honour_are_refused_with_one_line(tmp_path, setting, with_model):
    train_set, test_set = digits_sets()
    model = tests_helpers.factory() if with_model else None
    with pytest.raises(ConfigError, match=setting.split("=")[0]) as e:
        advcoreset.train(cfg(tmp_path, setting), model=model, train_set=train_set, test_set=test_set)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_users_model_and_data_are_recorded_as_such_and_export(tmp_path, capsys):
    """config.yaml and model.json say what ran (they said fashion-mnist and small_cnn); `advcoreset export` writes
    the weights with a null architecture and the factory (it failed: "not written by advcoreset train"); the run
    resumes from Python with its saved config, while the command line says what to pass."""
    train_set, test_set = digits_sets()
    model = tests_helpers.factory()
    Trainer(cfg(tmp_path), model=model, train_set=train_set, test_set=test_set,
            model_factory="tests_helpers:factory").run(stop_after=1)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "data.name is user" in capsys.readouterr().err
    model = tests_helpers.factory()
    advcoreset.train(run / "config.yaml", model=model, train_set=train_set, test_set=test_set, resume=True,
                     model_factory="tests_helpers:factory")
    text = (run / "config.yaml").read_text()
    assert "fashion-mnist" not in text and "small_cnn" not in text
    saved = yaml.safe_load(text)
    assert saved["data"]["name"] == "user" and saved["data"]["user"] == {
        "class": "Named", "size": len(train_set), "test_class": "Named", "test_size": len(test_set),
        "shape": [1, 8, 8], "num_classes": 10, "class_names": train_set.classes, "keys": None}
    assert saved["model"] == {"name": "user", "width": None, "user": {
        "class": "DigitsMLP", "module": "tests_helpers", "factory": "tests_helpers:factory",
        "parameters": sum(p.numel() for p in model.parameters())}}
    meta = json.loads((run / "model.json").read_text())
    assert meta["architecture"] is None and meta["model"]["factory"] == "tests_helpers:factory"
    assert "tests_helpers:factory" in meta["note"] and meta["num_classes"] == 10
    assert meta["source"]["data"]["class"] == "Named" and meta["class_names"] == train_set.classes
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert json.loads((out / "model.json").read_text())["model"] == meta["model"]
    from safetensors.torch import load_file

    rebuilt = tests_helpers.factory()
    rebuilt.load_state_dict(load_file(str(out / "model.safetensors")))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(rebuilt(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="tests_helpers:factory"):
        advcoreset.load_model(out)


def test_a_built_in_model_on_a_users_dataset_exports_and_reloads(tmp_path):
    train_set, test_set = digits_sets()
    # fp32: a bf16 run trains in channels_last, whose convolutions round differently from the reloaded model's
    t = Trainer(cfg(tmp_path, "model.width=4", "optim.epochs=1", "amp=false"), train_set=train_set, test_set=test_set)
    t.run()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["name"] == "user" and saved["model"]["name"] == "small_cnn"
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert (out / "model_arch.py").is_file()
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(advcoreset.load_model(out)(x), t.model.eval()(x))


def test_a_factory_is_recorded_only_with_its_model(tmp_path):
    train_set, test_set = digits_sets()
    with pytest.raises(ConfigError, match="model_factory"):
        advcoreset.train(cfg(tmp_path), train_set=train_set, test_set=test_set, model_factory="tests_helpers:factory")
    with pytest.raises(ConfigError, match="model_factory"):
        advcoreset.train(cfg(tmp_path), model=tests_helpers.factory(), train_set=train_set, test_set=test_set,
                         model_factory="not a spec")
