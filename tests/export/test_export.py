"""Export: model.safetensors + model.json + model_arch.py load with torch + safetensors only (the documented
snippet, advcoreset unimportable) and give the library's logits for every built-in architecture; training
runs write the export; ``advcoreset export`` and ``advcoreset.load_model`` rebuild it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from advcoreset.cli import main
from advcoreset.config import Config
from advcoreset.export import export_model, load_model
from advcoreset.models import available_models, create_model
from advcoreset.training import train

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"
SHAPE = (3, 16, 16)
WIDTH = {"small_cnn": 4, "trades_cnn": 4, "preact_resnet18": 2, "resnet18": 2, "resnet50": 1, "wrn28_10": 1,
         "wrn34_10": 1}


def snippet() -> str:
    """The first python block of docs/export.md, the one users copy."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no python snippet"
    return block.group(1)


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, SHAPE[0], 7, SHAPE[1], [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], width=WIDTH.get(name, 2))
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics off their initial values
        for _ in range(2):
            model(torch.rand(8, *SHAPE))
    return model.eval()


def test_snippet_is_five_lines_and_imports_no_advcoreset():
    code = [ln for ln in snippet().splitlines() if ln.strip()]
    assert len(code) <= 5
    assert "advcoreset" not in snippet()


def test_every_builtin_architecture_loads_without_advcoreset(tmp_path):
    names = available_models()
    missing = sorted(set(names) - set(WIDTH))
    assert not missing, f"give {missing} a tiny width here"
    x = torch.rand(4, *SHAPE)
    expected = {}
    for name in names:
        model = tiny(name)
        args = {"in_channels": SHAPE[0], "num_classes": 7, "input_size": SHAPE[1], "mean": [0.4, 0.5, 0.6],
                "std": [0.2, 0.25, 0.3], "width": WIDTH[name]}
        export_model(model, tmp_path / name, architecture=name, arguments=args, input_shape=SHAPE)
        with torch.no_grad():
            expected[name] = model(x)
        assert torch.equal(load_model(tmp_path / name)(x), expected[name]), name  # the library's loader too
    save_file({"x": x, **expected}, str(tmp_path / "expected.safetensors"))
    # A fresh interpreter in which `import advcoreset` fails runs the documented snippet per folder.
    script = (
        "import sys, torch\n"
        "sys.modules['advcoreset'] = None\n"
        "torch.set_num_threads(1)\n"
        "from safetensors.torch import load_file\n"
        f"ref = load_file({str(tmp_path / 'expected.safetensors')!r})\n"
        f"for name in {names!r}:\n"
        "    sys.modules.pop('model_arch', None)\n"
        f"    code = {snippet()!r}.replace('\"models/x\"', repr({str(tmp_path)!r} + '/' + name))\n"
        "    ns = {}\n"
        "    exec(code, ns)\n"
        "    with torch.no_grad():\n"
        "        out = ns['model'](ref['x'])\n"
        "    assert torch.equal(out, ref[name]), name\n"
        "    sys.path.pop(0)\n"
        "    print('ok', name)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [w for n in names for w in ("ok", n)]


TINY = {"data": {"name": "digits", "test_subset": 64}, "model": {"width": 4},
        "objective": {"attack": {"steps": 1}}, "optim": {"epochs": 1},
        "selection": {"method": "gradmatch"}, "eval": {"pgd_steps": 2, "every": 0},
        "progress": "none", "threads": 1}


def test_training_run_writes_the_export_and_cli_exports_again(tmp_path, capsys):
    cfg = Config.from_dict({**TINY, "out_dir": str(tmp_path / "run")})
    results = train(cfg)
    run = tmp_path / "run"
    meta = json.loads((run / "model.json").read_text())
    assert meta["architecture"] == "small_cnn" and meta["input_shape"] == [1, 8, 8]
    assert meta["num_classes"] == 10 and meta["class_names"] == [str(d) for d in range(10)]
    assert meta["threat_model"] == {"objective": "pgd", "norm": "linf", "eps": 0.1}
    assert meta["accuracy"]["clean_acc"] == results["test_clean_acc"]
    assert meta["accuracy"]["pgd2_acc"] == results["test_pgd2_acc"]
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    weights = load_file(str(run / "model.safetensors"))
    assert weights.keys() == last.keys() and all(torch.equal(weights[k], last[k]) for k in last)

    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    assert json.loads((tmp_path / "exported" / "model.json").read_text())["accuracy"] == meta["accuracy"]
    model = load_model(tmp_path / "exported")
    x = torch.rand(5, 1, 8, 8)
    ref = create_model("small_cnn", 1, 10, 8, meta["mean"], meta["std"], width=4)
    ref.load_state_dict(last)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))
    assert main(["export", str(run), "--checkpoint", "best", "--out", str(tmp_path / "b")]) == 2  # bad input
    assert "best.pt" in capsys.readouterr().err  # this run kept no best checkpoint (no validation split)


def test_load_model_refuses_a_foreign_architecture(tmp_path):
    model = torch.nn.Linear(4, 2)
    export_model(model, tmp_path, architecture="my_net", arguments={}, input_shape=(1, 2, 2))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["architecture"] is None and "my_net" in meta["note"]
    assert not (tmp_path / "model_arch.py").exists()
    with pytest.raises(ValueError, match="no built-in architecture"):
        load_model(tmp_path)
    # a config naming a built-in model while the user's own module was trained: not claimed either
    export_model(model, tmp_path / "b", architecture="small_cnn", input_shape=(1, 8, 8),
                 arguments={"in_channels": 1, "num_classes": 2, "input_size": 8, "mean": [0.0], "std": [1.0]})
    assert json.loads((tmp_path / "b" / "model.json").read_text())["architecture"] is None


def test_package_level_load_model(tmp_path):
    import advcoreset

    model = tiny("small_cnn")
    export_model(model, tmp_path, architecture="small_cnn", input_shape=SHAPE,
                 arguments={"in_channels": 3, "num_classes": 7, "input_size": 16, "mean": [0.4, 0.5, 0.6],
                            "std": [0.2, 0.25, 0.3], "width": 4})
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(advcoreset.load_model(tmp_path)(x), model(x))
