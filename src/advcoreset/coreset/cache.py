"""Every training example's adversarial perturbation from the last time it was trained, for selection without
an attack pass (``selection.points: cached``).

Perturbations found for an example transfer from one epoch to the next (ATTA, Zheng et al., CVPR 2020), so
the last one stands in for a fresh selection attack: a round then only takes last-layer gradients at
x + delta, a forward pass and a closed-form gradient, instead of attacking the whole set
(``benchmarks/selection_features.py`` measures how well such points choose a coreset). Examples never
trained yet (or never since the cache began) are attacked as usual.

The cache holds one (C, H, W) delta per example in float16, in the image's own frame: the training step's
perturbation of an augmented view is carried back through the built-in crop / flip (``Augmentation.undo``;
pixels the crop cut off are 0). A Dataset's own random transforms cannot be undone here: its deltas stay in
the augmented view's frame.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advcoreset.data.loader import Batch

STORE = torch.float16


class PerturbationCache:
    """(n, C, H, W) float16 deltas x_adv - x on the training device and an (n,) ``known`` mask on the host
    (so that splitting a batch into known and unknown examples needs no device sync).

    ``remember(batch, x_adv)`` after each training attack; ``points(idx, x)`` gives x + delta for examples at
    ``idx`` (clamped to [0, 1]); ``known`` says which have a delta. The buffer is made at the first
    ``remember`` (the image shape is the batch's)."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.n = n
        self.device = torch.device(device)
        self.known = torch.zeros(n, dtype=torch.bool)
        self.delta: Tensor | None = None
        """(n, C, H, W) float16, or None before the first ``remember``."""

    def remember(self, batch: Batch, x_adv: Tensor) -> None:
        """Keep ``x_adv - batch.x`` (B, C, H, W) of the examples ``batch.idx`` (B,), in their own frame. A
        rank's weight-0 stand-in (``batch.counted`` False) is not one of its examples and is skipped."""
        if not batch.counted:
            return
        d = (x_adv.detach().float() - batch.x.float())
        if batch.aug is not None:
            d = batch.aug.undo(d)
        idx = batch.idx.to(self.device)
        if self.delta is None:
            self.delta = torch.zeros((self.n, *d.shape[1:]), dtype=STORE, device=self.device)
        elif self.delta.shape[1:] != d.shape[1:]:
            raise ValueError(f"perturbations of shape {tuple(d.shape[1:])} for a cache of {tuple(self.delta.shape[1:])}"
                             " images: remember the batches of the dataset the loader was built on")
        self.delta[idx] = d.to(device=self.device, dtype=STORE)
        self.known[batch.idx.cpu()] = True

    def points(self, idx: Tensor, x: Tensor) -> Tensor:
        """x (B, C, H, W) of the examples ``idx`` (B,) plus their cached deltas (0 where none), in [0, 1]: a new
        tensor (never ``x`` itself)."""
        if self.delta is None:
            return x.clone()
        d = self.delta[idx.to(self.device)].to(device=x.device, dtype=x.dtype)
        return (x + d).clamp_(0.0, 1.0).contiguous(memory_format=_layout(x))

    def known_at(self, idx: Tensor) -> Tensor:
        """(B,) bool on the host: which of the examples ``idx`` have a cached delta."""
        return self.known[idx.cpu()]

    def state_dict(self) -> dict[str, Any]:
        return {"known": self.known.cpu(), "delta": None if self.delta is None else self.delta.cpu()}

    def check_state(self, state: Any) -> None:
        """A ValueError unless ``state`` is a ``state_dict`` of a cache of these ``n`` examples."""
        known, delta = (state.get("known"), state.get("delta")) if isinstance(state, dict) else (None, None)
        ok = isinstance(known, Tensor) and known.dtype == torch.bool and tuple(known.shape) == (self.n,)
        ok = ok and (delta is None or (isinstance(delta, Tensor) and delta.dtype == STORE and delta.dim() >= 2
                                       and delta.shape[0] == self.n))
        if not ok:
            raise ValueError(f"the state's perturbation cache does not fit this loader's {self.n} examples (a bool "
                             "(n,) 'known' and a float16 (n, C, H, W) 'delta'): a state of another data set?")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.known = state["known"].cpu()
        self.delta = None if state["delta"] is None else state["delta"].to(self.device)


def _layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
