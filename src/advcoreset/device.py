"""Which torch device a run or an evaluation uses: below both training and evaluation, so neither needs
the other for it."""

from __future__ import annotations

import torch

from advcoreset.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; otherwise the named device, refused with one line when
    it names CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use device=cpu or auto")
    return dev
