"""Robust evaluation: clean, PGD (with restarts) and AutoAttack accuracy, JSON-serialisable results."""

from advcoreset.evaluation.autoattack import STANDARD_BUDGETS, AutoAttackBudgets, autoattack_accuracy
from advcoreset.evaluation.robust import (
    accuracy,
    check_perturbation,
    default_pgd_alpha,
    evaluate,
    pgd_accuracy,
    pgd_robust_mask,
)

__all__ = ["STANDARD_BUDGETS", "AutoAttackBudgets", "accuracy", "autoattack_accuracy", "check_perturbation",
           "default_pgd_alpha", "evaluate", "pgd_accuracy", "pgd_robust_mask"]
