"""The adversarial coreset as a PyTorch component: ``select_coreset`` (one round) and ``CoresetLoader``
(the whole lifecycle: warm start, schedule, selection, weight rule, resume) over a ``DataLoader`` and a
``CoresetSampler``."""

from advcoreset.coreset.cache import PerturbationCache
from advcoreset.coreset.loader import DATALOADER_OPTIONS, CoresetLoader
from advcoreset.coreset.parts import resolve_objective, resolve_selector
from advcoreset.coreset.sampler import WEIGHT_RULES, CoresetSampler
from advcoreset.coreset.select import run_selection, select_coreset, selection_gradients

__all__ = ["DATALOADER_OPTIONS", "WEIGHT_RULES", "CoresetLoader", "CoresetSampler", "PerturbationCache",
           "resolve_objective", "resolve_selector", "run_selection", "select_coreset", "selection_gradients"]
