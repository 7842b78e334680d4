"""The checks of a ``Config`` that need more than the config: every field's range, the registered names and
the datasets, so that nothing the config says can fail after training has run. ``validate(cfg)`` applies them
and ``load_config`` reads a config and validates it. A list of (holds, field, value, what it must be) per
section. This module sits above both the config (which imports nothing of the package) and the registries.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from advcoreset.config import POINTS, RESTS, USER, WARM_STARTS, Config, ConfigError
from advcoreset.data.datasets import DataError, dataset_record
from advcoreset.models import available_models
from advcoreset.objectives import available_objectives
from advcoreset.optimizers import available_optimizers
from advcoreset.selection import available_selectors


def _non_finite(obj: Any, prefix: str = "") -> tuple[str, Any] | None:
    """(dotted name, value) of the first float field (or list of floats) holding NaN or inf, else None."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            bad = _non_finite(v, f"{prefix}{f.name}.")
            if bad:
                return bad
        elif isinstance(v, float) and not math.isfinite(v):
            return prefix + f.name, v
        elif isinstance(v, list) and any(isinstance(x, float) and not math.isfinite(x) for x in v):
            return prefix + f.name, v
    return None


Rule = tuple[bool, str, Any, str]


def _names(c: Any) -> list[Rule]:
    """Registered names: objectives, models, selectors, optimisers."""
    rules = []
    for field_name, value, names in (("objective.name", c.objective.name, available_objectives()),
                                     ("model.name", c.model.name, available_models()),
                                     ("selection.method", c.selection.method, available_selectors()),
                                     ("optim.name", c.optim.name, available_optimizers())):
        mine = field_name == "model.name" and value == USER  # a caller's module, recorded by train()
        rules.append((value in names or mine, field_name, value, f"must be one of {names}"))
    return rules


def _objective_rules(c: Any) -> list[Rule]:
    a, m = c.objective.attack, c.model
    return [
        (a.norm in ("linf", "l2"), "objective.attack.norm", a.norm, "must be linf or l2"),
        (c.objective.name != "nfgsm" or a.norm == "linf", "objective.attack.norm", a.norm,
         "must be linf for objective nfgsm (N-FGSM is defined for l_inf)"),
        (a.eps >= 0, "objective.attack.eps", a.eps, "must be >= 0"),
        (a.norm != "linf" or a.eps <= 1, "objective.attack.eps", a.eps,
         "must be <= 1 for linf (pixels are in [0, 1])"),
        (a.alpha > 0, "objective.attack.alpha", a.alpha, "must be > 0"),
        (a.steps >= 1, "objective.attack.steps", a.steps, "must be >= 1"),
        (a.restarts >= 1, "objective.attack.restarts", a.restarts, "must be >= 1"),
        (c.objective.beta >= 0, "objective.beta", c.objective.beta, "must be >= 0"),
        (c.objective.pat.bound > 0, "objective.pat.bound", c.objective.pat.bound, "must be > 0"),
        (m.width is None or m.width >= 1, "model.width", m.width, "must be >= 1 or null"),
    ]


def _one_of(choices: tuple[str, ...]) -> str:
    """"must be a, b or c"."""
    return f"must be {', '.join(choices[:-1])} or {choices[-1]}"


def _selection_rules(c: Any) -> list[Rule]:
    s = c.selection
    return [
        (0 < s.fraction <= 1, "selection.fraction", s.fraction, "must be in (0, 1]"),
        (s.warm_epochs >= 0, "selection.warm_epochs", s.warm_epochs, "must be >= 0"),
        (s.warm_start in WARM_STARTS, "selection.warm_start", s.warm_start, _one_of(WARM_STARTS)),
        (s.rest in RESTS, "selection.rest", s.rest, _one_of(RESTS)),
        (s.rest == "drop" or c.optim.weight_norm != "resample", "selection.rest", s.rest,
         "trains every example once an epoch, so optim.weight_norm must be auto, batch or epoch, not resample"),
        (s.interval >= 1, "selection.interval", s.interval, "must be >= 1"),
        (s.pool is None or s.pool >= 1, "selection.pool", s.pool, "must be >= 1 (a multiple of the budget) or null"),
        (s.pool is None or s.method in ("craig", "gradmatch"), "selection.pool", s.pool,
         f"applies to craig and gradmatch only (selection.method {s.method} reads no gradients); set it to null"),
        (s.method != "rs2" or s.interval == 1, "selection.interval", s.interval,
         "must be 1 for selection.method rs2 (a fresh random subset every epoch)"),
        (s.grad_features in ("logits", "last_layer"), "selection.grad_features", s.grad_features,
         "must be logits or last_layer"),
        (s.points in POINTS, "selection.points", s.points, _one_of(POINTS)),
        (s.lam >= 0, "selection.lam", s.lam, "must be >= 0"),
        (s.solver_threads is None or s.solver_threads >= 1, "selection.solver_threads", s.solver_threads,
         "must be >= 1, or null for the run's own thread count"),
        (s.selection_batch_size >= 1, "selection.selection_batch_size", s.selection_batch_size, "must be >= 1"),
        (s.distributed in ("gather", "partition"), "selection.distributed", s.distributed,
         "must be gather or partition"),
        (s.partition_rounds in (1, 2), "selection.partition_rounds", s.partition_rounds, "must be 1 or 2"),
        (any(s.measure_error is v for v in (True, False)) or s.measure_error == "auto", "selection.measure_error",
         s.measure_error, "must be auto, true or false"),
        (s.attack_steps is None or s.attack_steps >= 0, "selection.attack_steps", s.attack_steps, "must be >= 0"),
        (s.attack_alpha is None or s.attack_alpha > 0, "selection.attack_alpha", s.attack_alpha, "must be > 0"),
    ]


def _optim_rules(c: Any) -> list[Rule]:
    o = c.optim
    return [
        (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas,
         "must be two numbers in [0, 1)"),
        (o.epochs >= 1, "optim.epochs", o.epochs, "must be >= 1"),
        (o.batch_size >= 1, "optim.batch_size", o.batch_size, "must be >= 1"),
        (o.lr > 0, "optim.lr", o.lr, "must be > 0"),
        (o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0"),
        (o.schedule in ("onecycle", "step", "cosine", "constant", "none"), "optim.schedule", o.schedule,
         "must be onecycle, step, cosine, constant or none"),
        (all(0 < m < 1 for m in o.milestones), "optim.milestones", o.milestones, "must be fractions in (0, 1)"),
        (o.weight_norm in ("auto", "batch", "epoch", "resample"), "optim.weight_norm", o.weight_norm,
         "must be auto, batch, epoch or resample"),
        (0 < o.pct_start < 1, "optim.pct_start", o.pct_start, "must be in (0, 1)"),
        (isinstance(o.accumulate, int) and o.accumulate >= 1, "optim.accumulate", o.accumulate,
         "must be an integer >= 1 (mini-batches per optimiser step)"),
    ]


def _data_eval_rules(c: Any) -> list[Rule]:
    d, e = c.data, c.eval
    return [
        (d.augment in ("auto", "none", "crop", "crop_flip"), "data.augment", d.augment,
         "must be auto, none, crop or crop_flip"),
        (d.val_size >= 0, "data.val_size", d.val_size, "must be >= 0"),
        (d.train_subset is None or d.train_subset >= 1, "data.train_subset", d.train_subset, "must be >= 1 or null"),
        (d.test_subset is None or d.test_subset >= 1, "data.test_subset", d.test_subset, "must be >= 1 or null"),
        (e.pgd_steps >= 1, "eval.pgd_steps", e.pgd_steps, "must be >= 1"),
        (e.pgd_restarts >= 1, "eval.pgd_restarts", e.pgd_restarts, "must be >= 1"),
        (e.every >= 0, "eval.every", e.every, "must be >= 0"),
        (e.autoattack_targets >= 1, "eval.autoattack_targets", e.autoattack_targets, "must be >= 1"),
        (e.autoattack_version in ("standard", "fast"), "eval.autoattack_version", e.autoattack_version,
         "must be standard or fast"),
        (c.progress in ("auto", "bar", "line", "none"), "progress", c.progress, "must be auto, bar, line or none"),
    ]


def _rules(c: Any) -> list[Rule]:
    """(holds, field, value, what it must be) for every field; ``None`` means "the default" where allowed."""
    d, s, o, e, p = c.data, c.selection, c.optim, c.eval, c.objective.pat
    return [
        (d.crop_padding >= 0, "data.crop_padding", d.crop_padding, "must be >= 0 (0 = no crop)"),
        (d.image_size is None or d.image_size >= 1, "data.image_size", d.image_size, "must be >= 1 or null"),
        ((d.name == USER) == isinstance(d.user, dict), "data.user", d.user,
         "is written by train(train_set=...) with data.name user (a mapping), and is null otherwise"),
        ((c.model.name == USER) == isinstance(c.model.user, dict), "model.user", c.model.user,
         "is written by train(model=...) with model.name user (a mapping), and is null otherwise"),
        (p.steps >= 1, "objective.pat.steps", p.steps, "must be >= 1"),
        (p.lambda_init > 0, "objective.pat.lambda_init", p.lambda_init, "must be > 0"),
        (p.lambda_growth >= 1, "objective.pat.lambda_growth", p.lambda_growth, "must be >= 1"),
        (bool(p.lpips), "objective.pat.lpips", p.lpips, "must be self or the path of an AlexNet weights file"),
        (0 <= s.tol < 1, "selection.tol", s.tol, "must be in [0, 1) (a relative residual)"),
        (s.max_class_size >= 1, "selection.max_class_size", s.max_class_size, "must be >= 1"),
        (0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)"),
        (not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov, "needs optim.momentum > 0"),
        (o.gamma > 0, "optim.gamma", o.gamma, "must be > 0"),
        (o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", o.grad_clip,
         "must be > 0 or null (no clipping)"),
        (e.pgd_alpha is None or e.pgd_alpha > 0, "eval.pgd_alpha", e.pgd_alpha,
         "must be > 0 or null (2.5 eps / steps)"),
        (not e.autoattack or c.objective.attack.eps > 0, "eval.autoattack", e.autoattack,
         "needs objective.attack.eps > 0 (AutoAttack has nothing to attack at eps 0)"),
        (e.val_pgd_steps >= 1, "eval.val_pgd_steps", e.val_pgd_steps, "must be >= 1"),
        (e.autoattack_n >= 1, "eval.autoattack_n", e.autoattack_n, "must be >= 1"),
        (e.batch_size >= 1, "eval.batch_size", e.batch_size, "must be >= 1"),
        (e.union_linf_eps is None or 0 < e.union_linf_eps <= 1, "eval.union_linf_eps", e.union_linf_eps,
         "must be in (0, 1] (pixels in [0, 1]) or null"),
        (e.union_l2_eps is None or e.union_l2_eps > 0, "eval.union_l2_eps", e.union_l2_eps, "must be > 0 or null"),
        (0 <= c.seed < 2**63, "seed", c.seed, "must be in [0, 2**63)"),
        (re.fullmatch(r"auto|cpu|cuda(:\d+)?", c.device) is not None, "device", c.device,
         "must be auto, cpu, cuda or cuda:N (N a GPU index)"),
        (any(c.amp is v for v in (True, False)) or c.amp == "auto", "amp", c.amp, "must be auto, true or false"),
        (c.threads is None or c.threads >= 1, "threads", c.threads, "must be >= 1 or null (torch's default)"),
        (bool(c.out_dir.strip()), "out_dir", c.out_dir, "must be a folder path"),
    ]


def first_problem(c: Any) -> str | None:
    """The message for the first field of config ``c`` out of range (naming the field), else None."""
    bad = _non_finite(c)
    if bad is not None:
        return f"{bad[0]} must be a finite number, got {bad[1]!r}"
    try:
        if c.data.name != USER:  # a caller's Dataset, recorded by train()
            dataset_record(c.data.name)
    except DataError as e:
        return f"data.name: {e}"
    for ok, name, value, msg in (*_names(c), *_objective_rules(c), *_selection_rules(c), *_optim_rules(c),
                                 *_data_eval_rules(c), *_rules(c)):
        if not ok:
            return f"{name} {msg}, got {value!r}"
    return None


def validate(cfg: Config) -> Config:
    """``cfg`` itself when every field is in range and every name registered; else ``ConfigError`` naming the
    first bad field (``objective.attack.eps must be >= 0, got -1``)."""
    problem = first_problem(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides; validated."""
    cfg = Config.from_yaml(path) if path else Config()
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return validate(cfg)
