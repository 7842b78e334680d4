"""The adversarial coreset as a PyTorch component: ``select_coreset`` (one round) and ``CoresetLoader``
(the whole lifecycle: warm start, schedule, selection, weight rule, resume)."""

from advcoreset.coreset.loader import WEIGHT_RULES, CoresetLoader
from advcoreset.coreset.parts import resolve_objective, resolve_selector
from advcoreset.coreset.select import run_selection, select_coreset, selection_gradients

__all__ = ["WEIGHT_RULES", "CoresetLoader", "resolve_objective", "resolve_selector", "run_selection",
           "select_coreset", "selection_gradients"]
