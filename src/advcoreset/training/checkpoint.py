"""Atomic checkpoints that load with ``weights_only=True`` (no code runs when a checkpoint is read).

Every failure to read one is a ``CheckpointError`` naming the file and what to do; torch's own message is
never passed on (for a refused pickle it advises ``weights_only=False``, which would run the file's code).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.safeload import CheckpointError, load_weights_only

__all__ = ["CheckpointError", "check_resumable", "check_state_dict", "load_checkpoint", "load_weights_only",
           "rng_state", "save_atomic", "set_rng_state"]

# What a resumable checkpoint (Trainer._checkpoint) holds beside the model.
RESUME_KEYS = ("model", "optimizer", "epoch", "rng")


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to ``path.tmp`` then rename: a crash mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_atomic`` with ``weights_only=True``; ``CheckpointError`` otherwise."""
    ckpt = load_weights_only(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"checkpoint {path} has no 'model' state dict: not an advcoreset checkpoint")
    return ckpt


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` holds what ``--resume`` restores (``RESUME_KEYS``)."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt.get("epoch"), int) or ckpt["epoch"] < 0:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: it lacks {missing or ['a valid epoch']} "
                              "(a best.pt or a foreign file?); resume from the run's own last.pt")


def check_state_dict(model: nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` naming ``path`` unless ``state`` has exactly ``model``'s keys and shapes
    (a checkpoint of another model, width or dataset)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"checkpoint {path} does not fit the run's model: missing {missing[:3]}, "
                              f"unexpected {extra[:3]} (a checkpoint of another model?)")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if not isinstance(v, Tensor) or v.shape != own[k].shape][:3]
    if bad:
        raise CheckpointError(f"checkpoint {path} does not fit the run's model (another model width, number "
                              f"of classes or dataset?): {'; '.join(bad)}")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
