"""Objectives and selectors by name with the package's defaults, or as objects the caller built."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from advcoreset.config import AttackConfig, ObjectiveConfig, PATConfig, SelectionConfig
from advcoreset.objectives import Objective, available_objectives, build_objective, build_selection_objective
from advcoreset.selection import Selector, available_selectors, build_selector

_ATTACK = {f.name for f in dataclasses.fields(AttackConfig)}
_PAT = {f.name for f in dataclasses.fields(PATConfig)}
_SELECTION = {f.name for f in dataclasses.fields(SelectionConfig)} - {"method", "fraction", "attack_steps",
                                                                      "attack_alpha", "pool"}
SELECTOR_OPTIONS = frozenset(_SELECTION)
"""Options a selector given by name takes (batchwise, selection_batch_size, lam, tol, max_class_size, ...)."""


def resolve_objective(spec: str | Objective, **options: Any) -> Objective:
    """An objective: ``spec`` itself when it is one, else the registered objective of that name
    (standard, pgd, trades, fast, pat) with the config's defaults, overridden by ``options``: attack
    fields (eps, alpha, steps, norm, random_start), ``beta`` (TRADES) and PAT fields (bound, lpips,
    lambda_init, lambda_growth; ``steps`` sets PAT's steps too)."""
    if isinstance(spec, Objective):
        if options:
            raise ValueError(f"objective options {sorted(options)} apply to an objective given by name, not to "
                             f"the {type(spec).__name__} object passed")
        return spec
    if not isinstance(spec, str) or spec not in available_objectives():
        raise ValueError(f"objective {spec!r} is not an Objective nor one of {available_objectives()}")
    unknown = set(options) - _ATTACK - _PAT - {"beta"}
    if unknown:
        raise ValueError(f"unknown objective option(s) {sorted(unknown)}; known: "
                         f"{sorted(_ATTACK | _PAT | {'beta'})}")
    return build_objective(_objective_config(spec, options))


def _objective_config(spec: str, options: dict[str, Any]) -> ObjectiveConfig:
    attack = AttackConfig(**{k: v for k, v in options.items() if k in _ATTACK})
    pat = PATConfig(**{k: v for k, v in options.items() if k in _PAT})
    return ObjectiveConfig(name=spec, beta=options.get("beta", ObjectiveConfig.beta), attack=attack, pat=pat)


def resolve_selection_objective(spec: str | Objective, options: dict[str, Any] | None = None,
                                attack_steps: int | None = None, attack_alpha: float | None = None) -> Objective:
    """The objective a selection pass attacks with, as ``train()`` builds it: an objective given by name gets
    ``attack_steps`` (default: the config's, ``SelectionConfig.attack_steps``, a 1-step attack) and
    ``attack_alpha`` (default 2.5 eps / attack_steps); an Objective object is used as it is (then neither may
    be given)."""
    options = options or {}
    if isinstance(spec, Objective):
        if attack_steps is not None or attack_alpha is not None:
            raise ValueError("attack_steps / attack_alpha apply to an objective given by name; the "
                             f"{type(spec).__name__} object passed attacks as it was built")
        return resolve_objective(spec, **options)
    resolve_objective(spec, **options)  # the name and the options checked, each error naming them
    steps = SelectionConfig.attack_steps if attack_steps is None else attack_steps
    if steps is not None and steps < 1:
        raise ValueError(f"attack_steps must be >= 1, got {steps}")
    return build_selection_objective(_objective_config(spec, options),
                                     SelectionConfig(attack_steps=steps, attack_alpha=attack_alpha))


def resolve_selector(method: str | Selector, fraction: float, seed: int = 0, **options: Any) -> Selector:
    """A selector: ``method`` itself when it is one (``fraction`` and ``seed`` are then its own, and options are
    refused), else the registered selector of that name (full, random,
    random_fixed, rs2, craig, gradmatch) for ``fraction`` of every class, with the config's defaults overridden by
    ``options`` (batchwise, selection_batch_size, lam, tol, max_class_size). ``seed`` fixes batch splits and
    the fixed random subset."""
    if not isinstance(method, str):
        if not (hasattr(method, "select") and hasattr(method, "needs_grads")):
            raise ValueError(f"method must be a selector name {available_selectors()} or a Selector, got "
                             f"{type(method).__name__}")
        if options:  # they would be silently dropped: the object selects as it was built
            raise ValueError(f"selector options {sorted(options)} apply to a selector given by name, not to the "
                             f"{type(method).__name__} object passed")
        return method
    if method not in available_selectors():
        raise ValueError(f"unknown selection method {method!r}; available: {available_selectors()}")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(f"fraction must be a number in (0, 1], got {type(fraction).__name__} {fraction!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    unknown = set(options) - _SELECTION
    if unknown:
        raise ValueError(f"unknown selector option(s) {sorted(unknown)}; known: {sorted(_SELECTION)}")
    return build_selector(SelectionConfig(method=method, fraction=fraction, **options), seed)
