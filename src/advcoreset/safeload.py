"""Reading tensors a user hands over (checkpoints, weights files) without running any of their code.

``torch.load(weights_only=True)`` or safetensors; every failure becomes a ``CheckpointError`` that names the
file and what to do. torch's own message is never passed on: for a refused pickle it advises
``weights_only=False``, which would run the file's code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, truncated, refused, or does not fit the model."""


def load_weights_only(path: str | Path, what: str = "checkpoint",
                      map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (or safetensors for ``.safetensors``), with every failure
    reported as a ``CheckpointError`` that names ``what`` and ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends: a damaged file, named
            raise CheckpointError(f"{what} {path} is not a readable safetensors file ({type(e).__name__}); "
                                  "it may be truncated or corrupt: replace it") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{what} {path} was refused: it holds Python objects other than tensors and "
                              "plain containers (not a file written by advcoreset or torch.save of a state "
                              "dict, or a tampered one); nothing in it was run. Use a file you trust the "
                              "origin of") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, wrong magic, EOF: the file is named, not torch
        raise CheckpointError(f"{what} {path} could not be read ({type(e).__name__}): it is truncated, "
                              "empty or not a torch file; restore it or start a new run") from None
