"""Optimisers by name: ``optim.name`` in the config picks one; its hyper-parameters come from ``optim``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from advcoreset.config import OptimConfig
from advcoreset.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay)


def available_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` names over ``params``; the LR is then set every step by the schedule."""
    fn: Callable[..., torch.optim.Optimizer] = OPTIMIZERS.get(cfg.name)
    return fn(params, cfg)
