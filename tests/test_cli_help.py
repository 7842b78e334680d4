"""CLI polish: --version, help text on every option of every subcommand; TensorBoard hyper-parameters."""

from __future__ import annotations

import argparse
import json

import pytest

import advcoreset
from advcoreset.cli import build_parser, main
from advcoreset.training.logging import MetricsLog, flatten_hparams


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"advcoreset {advcoreset.__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def test_every_option_of_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"train", "eval", "export", "config", "bench"} <= set(commands)
    bare = [f"{name} {a.option_strings or a.dest}" for name, p in [("advcoreset", parser), *commands.items()]
            for a in p._actions
            if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help != argparse.SUPPRESS)]
    assert not bare, f"options without help text: {bare}"
    for name in commands:  # and the printed help shows it
        with pytest.raises(SystemExit):
            main([name, "-h"])
        text = capsys.readouterr().out
        for a in commands[name]._actions:
            if a.option_strings and a.help:
                assert a.help.split()[0] in text, (name, a.option_strings)


def test_tensorboard_gets_hparams_once_and_no_constant_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "config.yaml").write_text("objective:\n  attack:\n    eps: 0.1\n    norm: linf\nseed: 3\n"
                                          "threads: null\n")
    log = MetricsLog(tmp_path, tensorboard=True)
    for ep, loss in enumerate([2.0, 1.5, 1.2], 1):
        log.write({"kind": "epoch", "epoch": ep, "train_loss": loss, "test_eps": 0.1, "phase": "full"})
    log.write({"kind": "final", "epoch": 3, "test_clean_acc": 0.8, "test_pgd20_acc": 0.4, "time_final_eval": 2.0})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = acc.Tags()["scalars"]
    assert "epoch/train_loss" in tags and "epoch/test_eps" not in tags
    assert [e.value for e in acc.Scalars("epoch/train_loss")] == pytest.approx([2.0, 1.5, 1.2])
    assert acc.Scalars("final/test_clean_acc")[0].value == pytest.approx(0.8)
    plugin = acc.PluginTagToContent("hparams")
    assert len([t for t in plugin if t.endswith("session_start_info")]) == 1
    start = plugin["_hparams_/session_start_info"]
    assert b"objective.attack.eps" in start and b"seed" in start
    assert json.loads(json.dumps(flatten_hparams({"a": {"b": None, "c": [1, 2]}}))) == {"a.b": "None", "a.c": "[1, 2]"}
