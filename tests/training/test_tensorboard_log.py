"""The TensorBoard log (training/logging.py): hyper-parameters once, no constant scalars."""

from __future__ import annotations

import json

import pytest

from advcoreset.training.logging import MetricsLog, flatten_hparams


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
