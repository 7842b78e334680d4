"""The learning-rate schedule, a function of the training epochs only (the coreset schedule, warm epochs
and rounds, is ``CoresetLoader.is_warm`` / ``selects_at``).

The LR is a function of training progress p in [0, 1] (fractional epochs done / epochs), so epochs on a
coreset (fewer mini-batches) advance it exactly as much as full epochs: the schedule counts only epochs
that train (the official code advances it through skipped epochs too).
"""

from __future__ import annotations

import math

from advcoreset.config import OptimConfig


def lr_at(progress: float, cfg: OptimConfig) -> float:
    """Learning rate at training progress ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule in ("constant", "none"):  # none: the loop sets no rate at all (training/epoch.py)
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(p >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * p))
    if cfg.schedule == "onecycle":  # linear up to the peak, linear down to 0 (Wong et al. 2020)
        if p < cfg.pct_start:
            return cfg.lr * p / cfg.pct_start
        return cfg.lr * (1 - p) / (1 - cfg.pct_start)
    raise ValueError(f"unknown LR schedule {cfg.schedule!r}")
