"""Coreset selection: per-class CRAIG / GradMatch / random / RS2 / full selectors behind one interface.

``build_selector(cfg.selection, seed).select(grads, labels, generator) -> Selection`` is all the trainer
needs; ``last_layer_grads`` produces the (n, d) gradients the gradient-based selectors read;
``ShardedSelector(selector, world)`` is any of them for ranks that each hold a row range of the gradients.
"""

from advcoreset.selection.base import Selection, Selector, approximation_error, fraction_of, select_round
from advcoreset.selection.craig import craig
from advcoreset.selection.gradients import last_layer_grads, last_layer_grads_at
from advcoreset.selection.gradmatch import GradMatchResult, gradmatch, gradmatch_solve, ridge
from advcoreset.selection.selectors import (
    SELECTORS,
    CraigSelector,
    FullSelector,
    GradMatchSelector,
    RandomSelector,
    RS2Selector,
    available_selectors,
    build_selector,
    class_budget,
)
from advcoreset.selection.sharded import GradShard, ShardedSelector

__all__ = ["Selection", "Selector", "approximation_error", "fraction_of", "select_round", "craig", "gradmatch",
           "gradmatch_solve", "ridge", "GradMatchResult", "last_layer_grads", "last_layer_grads_at",
           "available_selectors", "build_selector", "class_budget", "SELECTORS", "CraigSelector", "FullSelector",
           "GradMatchSelector", "RandomSelector", "RS2Selector", "GradShard", "ShardedSelector"]
