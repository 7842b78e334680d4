"""The one selector interface: (per-example gradients, labels, fraction) -> (indices, weights)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from advcoreset.progress import Task


@dataclass
class Selection:
    indices: Tensor
    """(k,) int64 positions into the array the gradients came from, sorted ascending."""
    weights: Tensor
    """(k,) float32 weights, > 0; sum equals the number of points represented (n for full coverage)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Solver diagnostics (e.g. per-class residuals); JSON-serialisable values only."""
    record: dict[str, Any] = field(default_factory=dict)
    """Fields of the round's selection record beside the solver's diagnostics, for a selector that measures its
    own round (``ShardedSelector``: its mode, bytes sent, seconds and the whole set's ``grad_error``)."""


class Selector(Protocol):
    """A coreset selector. ``needs_grads`` tells the caller whether to pay for the gradient pass; ``subset``
    is False for a selector that always returns every example (no warm start or schedule then);
    ``weight_rule`` is how its weights enter training by default (``batch``, ``epoch`` or ``resample``, see
    ``advcoreset.coreset.loader``).

    Optional, declared by the selectors that have them (read through ``fraction_of`` and ``getattr``):
    ``fraction`` (the share of every class kept; one without it counts as keeping everything), ``per_round``
    (``select`` takes the schedule's ``round_index``, e.g. RS2), ``batchwise`` (whole mini-batches are chosen),
    ``weighted`` (``select`` takes ``point_weights`` and ``class_sizes``: rows that stand for several examples,
    as the partition mode's second round passes them; CRAIG and GradMatch)."""

    name: str
    needs_grads: bool
    subset: bool
    weight_rule: str

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator,
               progress: Task | None = None) -> Selection:
        """grads: (n, d) float or None; labels: (n,) int64 -> Selection over positions 0..n-1. ``progress``: a
        task (``advcoreset.progress``) a per-class solver advances by one per class."""
        ...


def approximation_error(grads: Tensor, indices: Tensor, weights: Tensor) -> float:
    """||sum_i g_i - sum_j w_j g_j|| / ||sum_i g_i||: the quantity ACS's convergence bound depends on.

    grads: (n, d); indices, weights: (k,). Both sums run in ``grads``' dtype over blocks of rows and
    accumulate the block results in float64: a stable small residual without converting all of ``grads``
    to float64 (slow on a CPU)."""
    full = _blocked_sum(grads, torch.ones(grads.shape[0], dtype=grads.dtype, device=grads.device))
    approx = _blocked_sum(grads[indices], weights.to(grads.dtype))
    return float((full - approx).norm() / full.norm().clamp_min(1e-30))


def _blocked_sum(g: Tensor, w: Tensor, block: int = 1024) -> Tensor:
    """sum_i w_i g_i for g (n, d), w (n,): per-block products in g's dtype, accumulated in float64. (d,)"""
    out = torch.zeros(g.shape[1], dtype=torch.float64, device=g.device)
    for i in range(0, g.shape[0], block):
        out += (w[i:i + block] @ g[i:i + block]).double()
    return out


def fraction_of(selector: Selector) -> float:
    """The share of every class ``selector`` keeps: its ``fraction``, or 1.0 for a selector that declares none
    (a user's own that returns what it likes)."""
    return float(getattr(selector, "fraction", 1.0))


def select_round(selector: Selector, grads: Tensor | None, labels: Tensor, generator: torch.Generator, *,
                 progress: Task | None = None, round_index: int = 0) -> Selection:
    """``selector.select``, telling a selector that draws by round (``per_round``, e.g. RS2) which round of
    the schedule this is (``round_index``: rounds before this one); other selectors are called as they are."""
    if getattr(selector, "per_round", False):
        return selector.select(grads, labels, generator, progress=progress,  # type: ignore[call-arg]
                               round_index=round_index)
    return selector.select(grads, labels, generator, progress=progress)
