"""The one selector interface: (per-example gradients, labels, fraction) -> (indices, weights)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass
class Selection:
    indices: Tensor
    """(k,) int64 positions into the array the gradients came from, sorted ascending."""
    weights: Tensor
    """(k,) float32 weights, > 0; sum equals the number of points represented (n for full coverage)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Solver diagnostics (e.g. per-class residuals); JSON-serialisable values only."""


class Selector(Protocol):
    """A coreset selector. ``needs_grads`` tells the trainer whether to pay for the gradient pass."""

    name: str
    needs_grads: bool

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator) -> Selection:
        """grads: (n, d) float or None; labels: (n,) int64 -> Selection over positions 0..n-1."""
        ...


def approximation_error(grads: Tensor, indices: Tensor, weights: Tensor) -> float:
    """||sum_i g_i - sum_j w_j g_j|| / ||sum_i g_i||: the quantity ACS's convergence bound depends on.

    grads: (n, d); indices, weights: (k,). Computed in float64 for a stable small residual."""
    full = grads.sum(0, dtype=torch.float64)  # no float64 copy of all of grads
    approx = weights.double() @ grads[indices].double()
    return float((full - approx).norm() / full.norm().clamp_min(1e-30))
