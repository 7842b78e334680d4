"""Test helpers: an outside model for ``advcoreset eval --model tests_helpers:factory`` (not built by
advcoreset), a seconds-long digits run config, and the "stop, resume, compare" check of exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

TINY_RUN = ["data.name=digits", "data.test_subset=100", "model.width=16", "objective.attack.eps=0.1",
            "objective.attack.alpha=0.04", "objective.attack.steps=2", "optim.batch_size=64", "optim.lr=0.2",
            "eval.pgd_steps=2", "eval.every=0", "eval.autoattack=false", "progress=none", "threads=1",
            "selection.method=gradmatch", "optim.epochs=12"]
"""Overrides of a digits PGD-AT run that trains in seconds (width 16, 2-step attacks, no evaluation): the
former defaults' GradMatch coreset over 12 epochs, pinned so that the library's defaults can move."""


class DigitsMLP(nn.Module):
    """(B, 1, 8, 8) pixels in [0, 1] -> (B, num_classes) logits; normalises inside forward."""

    def __init__(self, num_classes: int = 10, in_pixels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_pixels, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - 0.3) / 0.3)


def factory() -> nn.Module:
    return DigitsMLP()


def five_classes() -> nn.Module:
    """Takes digits images but returns 5 logits: a class-count mismatch with digits' 10 classes."""
    return DigitsMLP(num_classes=5)


def cifar_sized() -> nn.Module:
    """Expects 3x32x32 images: an input-shape mismatch with digits' 1x8x8."""
    return DigitsMLP(in_pixels=3 * 32 * 32)


def trained_digits_mlp(steps: int = 150) -> nn.Module:
    """``factory()`` fitted for a few full-batch Adam steps on the digits training split (seeded)."""
    from advcoreset.data import load_dataset

    torch.manual_seed(0)
    train = load_dataset("digits", None, train=True)
    x, y = train.images.float() / 255, train.labels
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def tiny_config(tmp_path: Path, *overrides: str) -> Any:
    """The ``TINY_RUN`` config writing to ``tmp_path / "run"``, with ``overrides`` (``key=value``) on top."""
    from advcoreset.config_checks import load_config

    return load_config(None, [*TINY_RUN, f"out_dir={tmp_path / 'run'}", *overrides])


def resumed_run_matches(tmp_path: Path, stop_after: int, *overrides: str) -> tuple[Any, list[dict[str, Any]]]:
    """Train ``tiny_config(*overrides)`` whole in ``tmp_path / "a"``, and in ``tmp_path / "b"`` stop after
    ``stop_after`` epochs and resume; assert the final weights are equal bit for bit. Returns the whole run's
    Trainer and its metrics.jsonl records."""
    from advcoreset.training import Trainer

    a = Trainer(tiny_config(tmp_path / "a", *overrides))
    a.run()
    Trainer(tiny_config(tmp_path / "b", *overrides)).run(stop_after=stop_after)
    c = Trainer(tiny_config(tmp_path / "b", *overrides))
    c.run(resume=True)
    for wa, wc in zip(a.model.state_dict().values(), c.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wc)
    lines = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    return a, [json.loads(x) for x in lines]
