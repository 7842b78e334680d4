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
from torch import Tensor

from advcoreset.safeload import (
    CheckpointError,
    check_coreset_state,
    check_normalisation,
    check_state_dict,
    check_weights,
    describe_model,
    load_weights_only,
    model_signature,
)

__all__ = ["CheckpointError", "check_fits_data", "check_normalisation", "check_optimizer_state", "check_resumable",
           "check_rng_state", "check_state_dict", "check_weights", "describe_model", "load_checkpoint",
           "load_weights_only", "model_signature", "rng_state", "save_atomic", "set_rng_state"]

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


def check_resumable(ckpt: dict[str, Any], path: str | Path, generator: torch.Generator | None = None,
                    num_examples: int | None = None) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` holds what ``--resume`` restores (``RESUME_KEYS``), each in a
    form that restores: finite weights (``check_weights``), an optimizer state dict, random-number states
    that ``set_rng_state`` takes (``check_rng_state``; ``generator``: the run's data generator, by default a
    CPU one), a saved coreset of indices below ``num_examples`` (when known) with finite weights
    (``check_coreset_state``). Nothing is restored here, so a refused checkpoint leaves the run as it was."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    epoch = ckpt.get("epoch")
    if missing or not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: it lacks {missing or ['a valid epoch']} "
                              "(a best.pt or a foreign file?); resume from the run's own last.pt")
    opt = ckpt["optimizer"]
    if not (isinstance(opt, Mapping) and isinstance(opt.get("state"), Mapping)
            and isinstance(opt.get("param_groups"), list)):
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its 'optimizer' entry is not an optimizer "
                              "state dict (a damaged or foreign file); restore the run's last.pt or start a new run")
    problem = _bookkeeping_problem(ckpt)
    if problem:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its {problem} (a damaged or foreign file); "
                              "restore the run's last.pt or start a new run")
    check_weights(ckpt["model"], path)
    check_rng_state(ckpt["rng"], path, generator)
    check_coreset_state(ckpt.get("coreset"), path, num_examples)


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` naming ``path`` unless the optimizer state dict ``state`` (checked by
    ``check_resumable``) fits ``optimizer``: as many groups and parameters, and every per-parameter tensor (a
    momentum buffer, Adam's moments) of its parameter's shape; a misfit failed in the first step."""
    saved, groups = state["param_groups"], optimizer.param_groups
    where = f"checkpoint {path} cannot be resumed: its optimizer state"
    if len(saved) != len(groups) or any(not isinstance(s.get("params"), list) or len(s["params"]) != len(g["params"])
                                        for s, g in zip(saved, groups, strict=True)):
        raise CheckpointError(f"{where} holds other parameter groups than the run's optimizer (a damaged or foreign "
                              "file); restore the run's last.pt or start a new run")
    params = {pid: p for s, g in zip(saved, groups, strict=True)
              for pid, p in zip(s["params"], g["params"], strict=True)}
    for pid, entry in state["state"].items():
        param = params.get(pid)
        if param is None or not isinstance(entry, Mapping):
            raise CheckpointError(f"{where} has an entry {pid!r} for no parameter of the model (a damaged or foreign "
                                  "file); restore the run's last.pt or start a new run")
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(f"{where} {key!r} of parameter {pid} has shape {tuple(value.shape)}, the "
                                      f"parameter {tuple(param.shape)} (a damaged or foreign file); restore the "
                                      "run's last.pt or start a new run")


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _bookkeeping_problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with the entries ``--resume`` reads beside the model and the random states (each optional,
    as in checkpoints of older versions), else None: each of another type failed later as an internal error."""
    version, precision = ckpt.get("format_version", 1), ckpt.get("precision")
    times, errors = ckpt.get("times", {}), ckpt.get("grad_errors", [])
    for ok, what, value in (
            (isinstance(version, int) and not isinstance(version, bool), "'format_version'", version),
            (precision is None or isinstance(precision, str), "'precision'", precision),
            (_real(ckpt.get("best_val", -1.0)), "'best_val'", ckpt.get("best_val")),
            (isinstance(times, Mapping) and all(_real(t) for t in times.values()), "'times'", times),
            (isinstance(errors, list) and all(_real(e) for e in errors), "'grad_errors'", errors)):
        if not ok:
            return f"{what} entry is not what a run writes (got {type(value).__name__})"
    return None


def check_rng_state(rng: Any, path: str | Path, generator: torch.Generator | None = None) -> None:
    """Raise ``CheckpointError`` naming ``path`` unless ``rng`` (a checkpoint's ``rng`` entry) holds random-number
    states ``set_rng_state`` restores: ``torch`` and ``data`` uint8 tensors of the size and form the CPU
    generators take (each tried on a scratch generator, so no state of this process changes), ``cuda`` a list
    of uint8 tensors, one per visible GPU at most (checked only where CUDA is available, as it is restored)."""
    if not isinstance(rng, Mapping):
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its 'rng' entry is a {type(rng).__name__}, "
                              "not the random-number states (a damaged or foreign file); restore the run's last.pt "
                              "or start a new run")
    data = generator or torch.Generator()
    for key, ref, device in (("torch", torch.get_rng_state(), torch.device("cpu")),
                             ("data", data.get_state(), data.device)):
        value = rng.get(key)
        if not (isinstance(value, Tensor) and value.dtype == torch.uint8 and value.shape == ref.shape):
            got = f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            problem = f"is {got}, not a uint8 tensor of {ref.numel()} bytes"
        else:
            try:
                torch.Generator(device=device).set_state(value)
                continue
            except RuntimeError:
                problem = "is not a state the generator accepts"
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its random-number state rng[{key!r}] "
                              f"{problem} (a damaged or foreign file); restore the run's last.pt or start a new run")
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if not (isinstance(cuda, (list, tuple)) and len(cuda) <= torch.cuda.device_count()
                and all(isinstance(t, Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in cuda)):
            raise CheckpointError(f"checkpoint {path} cannot be resumed: its rng['cuda'] is not a list of uint8 "
                                  "states, one per GPU of this machine; resume on the machine it ran on or start "
                                  "a new run")


def check_fits_data(state: Mapping[str, Any], path: str | Path, channels: int | None, classes: int | None,
                    data: str) -> None:
    """Raise ``CheckpointError`` naming ``path`` unless the model of ``state`` takes images of ``channels``
    channels and predicts ``classes`` classes, those of the run's data ``data`` (None: not known, not checked)."""
    have = model_signature(state)
    if (channels is not None and have[0] != channels) or (classes is not None and have[1] != classes):
        raise CheckpointError(f"checkpoint {path} holds a model of {describe_model(*have)}, but the run's data "
                              f"({data}) has {describe_model(channels, classes)}: it is not a checkpoint of this "
                              "run; use the run's own last.pt or best.pt")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The random-number states a checkpoint keeps: torch's global CPU state, ``generator``'s (the data order)
    and, where CUDA is available, every GPU's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what ``rng_state`` saved (checked first by ``check_rng_state``)."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
