"""The learning-rate schedules (training/schedule.py): one-cycle, step and cosine."""

from __future__ import annotations

import pytest

from advcoreset.config import OptimConfig
from advcoreset.training.schedule import lr_at


def test_onecycle_peaks_and_ends_at_zero():
    cfg = OptimConfig(lr=0.2, schedule="onecycle", pct_start=0.25)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(0.25, cfg) == pytest.approx(0.2)
    assert lr_at(1.0, cfg) == pytest.approx(0.0)
    assert lr_at(0.125, cfg) == pytest.approx(0.1)


def test_step_and_cosine():
    cfg = OptimConfig(lr=1.0, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_at(p, cfg) for p in (0.1, 0.5, 0.8)] == pytest.approx([1.0, 0.1, 0.01])
    cfg = OptimConfig(lr=1.0, schedule="cosine")
    assert lr_at(0.5, cfg) == pytest.approx(0.5)
