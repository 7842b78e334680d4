"""The scripts in examples/ run as a user would run them, on tiny data, and report what they claim."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLES = Path(__file__).parents[2] / "examples"


def run(script: str, *args: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread, as the in-process tests use
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], check=True, capture_output=True,
                         text=True, timeout=600, env=env).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


def coreset_size(n: int, fraction: float = 0.3) -> int:
    from sklearn.datasets import load_digits

    counts = torch.bincount(torch.tensor(load_digits().target[:n]))
    return sum(math.ceil(round(fraction * int(c), 9)) for c in counts if c > 0)


def test_own_model_and_data(tmp_path):
    res = run("own_model_and_data.py", "--epochs", "2", "--n", "200", "--out", str(tmp_path / "run"))[-1]
    assert 0 <= res["test_pgd10_acc"] <= res["test_clean_acc"] <= 1
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sel = [r for r in recs if r["kind"] == "selection"]
    assert [r["method"] for r in sel] == ["craig"] and sel[0]["coreset_size"] == coreset_size(200)


def test_own_loop():
    lines = run("own_loop.py", "--epochs", "3", "--n", "200")
    k = coreset_size(200)
    assert [r["trained_on"] for r in lines[:3]] == [200, k, k]
    assert lines[0]["grad_error"] is None and 0 <= lines[1]["grad_error"] < 1
    assert lines[-1]["coreset_size"] == k and lines[-1]["test_clean_acc"] > 0.1  # chance is 0.1


def test_hf_style_dict_items_with_dataloader_workers():
    """Dict items read through keys=("image", "label") by two DataLoader workers: the same schedule and sizes
    as the own-loop example."""
    lines = run("hf_style_dataset.py", "--epochs", "3", "--n", "200", "--workers", "2")
    k = coreset_size(200)
    assert [r["trained_on"] for r in lines[:3]] == [200, k, k]
    assert lines[0]["grad_error"] is None and 0 <= lines[1]["grad_error"] < 1
    assert lines[-1]["coreset_size"] == k and lines[-1]["workers"] == 2 and lines[-1]["test_clean_acc"] > 0.1


def test_evaluate_any_model():
    res = run("evaluate_any_model.py", "--n", "16", "--eps", "0.05", "--smoke")[-1]
    assert res["n"] == 16 and res["comparable_to_robustbench"] is False  # tiny budgets are labelled
    assert 0 <= res["autoattack_acc"] <= res["clean_acc"] and 0 <= res["pgd20_acc"] <= res["clean_acc"]


def test_lightning_selects_on_schedule_even_when_it_stops_epochs_early():
    """Under Lightning, with limit_train_batches stopping every epoch before the loader is exhausted: the
    warm epoch, then a coreset chosen at the starts of epochs 2 and 4 (it used to stay warm forever)."""
    lines = run("lightning_coreset.py", "--epochs", "4", "--n", "200", "--limit-batches", "2")
    k = coreset_size(200)
    assert [r["batches"] for r in lines[:4]] == [2, math.ceil(k / 64), math.ceil(k / 64), math.ceil(k / 64)]
    assert lines[-1]["selections_at"] == 4 and lines[-1]["coreset_size"] == k
    full = run("lightning_coreset.py", "--epochs", "3", "--n", "200")
    assert [r["batches"] for r in full[:3]] == [math.ceil(200 / 64), math.ceil(k / 64), math.ceil(k / 64)]
