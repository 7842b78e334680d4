"""Learning-rate and coreset schedules, both functions of the training epochs only.

The LR is a function of training progress p in [0, 1] (fractional epochs done / epochs), so epochs on a
coreset (fewer mini-batches) advance it exactly as much as full epochs: the schedule counts only epochs
that train (the official code advances it through skipped epochs too).
"""

from __future__ import annotations

import math

from advcoreset.config import OptimConfig, SelectionConfig
from advcoreset.selection import build_selector


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


def uses_coreset(cfg: SelectionConfig) -> bool:
    """False when the configured selector keeps every example (then there is no warm start or schedule)."""
    return build_selector(cfg, 0).subset


def is_warm(epoch: int, cfg: SelectionConfig) -> bool:
    """True when epoch ``epoch`` (0-based) trains on the full data."""
    return not uses_coreset(cfg) or epoch < cfg.warm_epochs


def is_selection_epoch(epoch: int, cfg: SelectionConfig) -> bool:
    """True when a new coreset is chosen at the start of epoch ``epoch``."""
    return uses_coreset(cfg) and epoch >= cfg.warm_epochs and (epoch - cfg.warm_epochs) % cfg.interval == 0
