"""The config fields ``Config.validate`` checks beyond its own list, so that nothing the config says can fail
after training has run (issue 11). Duck-typed on the config: this module imports nothing from ``config``."""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from typing import Any


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


def _rules(c: Any) -> list[tuple[bool, str, Any, str]]:
    """(holds, field, value, what it must be) for every field; ``None`` means "the default" where allowed."""
    d, s, o, e, p = c.data, c.selection, c.optim, c.eval, c.objective.pat
    return [
        (d.crop_padding >= 0, "data.crop_padding", d.crop_padding, "must be >= 0 (0 = no crop)"),
        (d.image_size is None or d.image_size >= 1, "data.image_size", d.image_size, "must be >= 1 or null"),
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
         "must be > 0 or null (eps/10 for linf, eps/4 for l2)"),
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
        (c.threads is None or c.threads >= 1, "threads", c.threads, "must be >= 1 or null (torch's default)"),
        (bool(c.out_dir.strip()), "out_dir", c.out_dir, "must be a folder path"),
    ]


def first_problem(c: Any) -> str | None:
    """The message for the first field of config ``c`` out of range (naming the field), else None."""
    from advcoreset.data.datasets import DataError, _canonical

    bad = _non_finite(c)
    if bad is not None:
        return f"{bad[0]} must be a finite number, got {bad[1]!r}"
    try:
        _canonical(c.data.name)
    except DataError as e:
        return f"data.name: {e}"
    for ok, name, value, msg in _rules(c):
        if not ok:
            return f"{name} {msg}, got {value!r}"
    return None
