"""Reading tensors a user hands over (checkpoints, weights files) without running any of their code, and
checking them before any use (every entry a tensor, finite, a valid normalisation, the model's names, shapes
and kinds of dtype).

``torch.load(weights_only=True)`` or safetensors; every failure becomes a ``CheckpointError`` that names the
file and what to do. torch's own message is never passed on: for a refused pickle it advises
``weights_only=False``, which would run the file's code.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


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


def check_weights(state: Mapping[str, Any], path: str | Path, what: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming ``path`` unless every entry of the state dict ``state`` is a tensor,
    every floating one finite (the first NaN/inf tensor is named) and the normalisation buffers valid
    (``check_normalisation``). ``what``: how the file is called in the message."""
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{what} {path}: model entry {key!r} is a {type(value).__name__}, not a tensor "
                                  "(a damaged or foreign file); restore it or start a new run")
    check_normalisation(state, path, what)
    for key, value in state.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            n = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{what} {path}: model weight {key!r} holds {n} NaN/inf value(s) (a diverged "
                                  "run or a damaged file); use an earlier checkpoint or train again")


def check_normalisation(state: Mapping[str, Any], path: str | Path, what: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming ``path`` unless the per-channel ``mean``/``std`` buffers of ``state``
    (where present) are finite, ``std`` > 0 (inputs are divided by it) and ``mean`` in [0, 1] (the mean of
    pixels in [0, 1])."""
    for key in ("mean", "std"):
        value = state.get(key)
        if not isinstance(value, Tensor):
            continue
        if not value.is_floating_point():
            raise CheckpointError(f"{what} {path}: normalisation {key} is a {value.dtype} tensor, not a floating "
                                  "one (a damaged or tampered file); restore it or train again")
        values = value.detach().double().flatten()
        shown = [round(v, 6) for v in values.tolist()[:4]]
        if not bool(torch.isfinite(values).all()):
            problem = "is not finite"
        elif key == "std" and bool((values <= 0).any()):
            problem = "must be > 0 (every input is divided by it)"
        elif key == "mean" and bool(((values < 0) | (values > 1)).any()):
            problem = "must lie in [0, 1] (the mean of pixels in [0, 1])"
        else:
            continue
        raise CheckpointError(f"{what} {path}: normalisation {key} {shown} {problem} (a damaged or tampered "
                              "file); restore it or train again")


def model_signature(state: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input channels, classes) of a built-in model's state dict: from its ``mean`` (1, C, 1, 1) and
    ``head.weight`` (classes, F) entries, None for whichever is absent or of another form."""
    mean, head = state.get("mean"), state.get("head.weight")
    channels = mean.shape[1] if isinstance(mean, Tensor) and mean.dim() == 4 else None
    classes = head.shape[0] if isinstance(head, Tensor) and head.dim() == 2 else None
    return channels, classes


def describe_model(channels: int | None, classes: int | None) -> str:
    return f"{'?' if classes is None else classes} classes on {'?' if channels is None else channels}-channel images"


def check_state_dict(model: nn.Module, state: Mapping[str, Any], path: str | Path, what: str = "checkpoint",
                     against: str = "the run's model (made for its data)",
                     advice: str = "use the run's own last.pt or start a new run") -> None:
    """Raise ``CheckpointError`` naming ``path`` unless ``state`` has exactly ``model``'s keys, tensors of its
    shapes (a checkpoint of another model, width or dataset; classes and channels named where they differ).
    ``what``: how the file is called; ``against``: how the model is; ``advice``: what to do."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{what} {path} does not fit {against}: missing {missing[:3]}, "
                              f"unexpected {extra[:3]} (a checkpoint of another model?); {advice}")
    not_tensors = [f"{k!r} is a {type(v).__name__}" for k, v in state.items() if not isinstance(v, Tensor)][:3]
    if not_tensors:
        raise CheckpointError(f"{what} {path} is damaged or foreign: {'; '.join(not_tensors)}, not a tensor; "
                              "restore it or start a new run")
    have, want = model_signature(state), model_signature(own)
    if None not in want and have != want:
        raise CheckpointError(f"{what} {path} holds a model of {describe_model(*have)}, but {against} has "
                              f"{describe_model(*want)}: they are not of the same run; {advice}")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape][:3]
    if bad:
        raise CheckpointError(f"{what} {path} does not fit {against} (another model width, number "
                              f"of classes or dataset?): {'; '.join(bad)}; {advice}")
    check_dtypes(own, state, path, what, against, advice)


def dtype_kind(t: Tensor) -> str:
    """The kind of ``t``'s dtype: ``complex``, ``floating``, ``bool`` or ``integer``."""
    if t.is_complex():
        return "complex"
    if t.is_floating_point():
        return "floating"
    return "bool" if t.dtype == torch.bool else "integer"


def check_dtypes(own: Mapping[str, Tensor], state: Mapping[str, Any], path: str | Path, what: str = "checkpoint",
                 against: str = "the model", advice: str = "restore it or start a new run") -> None:
    """Raise ``CheckpointError`` naming ``path`` and the tensor unless every tensor of ``state`` whose name is in
    ``own`` (a model's state dict) has a dtype of the same kind (``dtype_kind``) as the model's: weights and
    statistics floating (``load_state_dict`` would cast complex, integer or bool values into them silently, an
    imaginary part dropped), counters such as BatchNorm's ``num_batches_tracked`` integer. Precision may differ
    (float16 weights load into a float32 model)."""
    for key, value in state.items():
        ref = own.get(key)
        if isinstance(value, Tensor) and isinstance(ref, Tensor) and dtype_kind(value) != dtype_kind(ref):
            raise CheckpointError(f"{what} {path}: tensor {key!r} is {value.dtype} ({dtype_kind(value)}), but "
                                  f"{against} holds {ref.dtype} ({dtype_kind(ref)}) there (a damaged, converted or "
                                  f"foreign file); {advice}")


def coreset_problem(entry: Any, num_examples: int | None = None) -> str | None:
    """What is wrong with a checkpoint's ``coreset`` entry (None, or ``{"indices": (k,) integer tensor,
    "weights": (k,) floating tensor}`` as a run saves its current selection), else None: indices in
    [0, ``num_examples``) (only >= 0 when None), weights finite and >= 0."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        return f"is a {type(entry).__name__}, not a mapping of 'indices' and 'weights'"
    idx, w = entry.get("indices"), entry.get("weights")
    if not isinstance(idx, Tensor) or not isinstance(w, Tensor):
        return f"holds indices of type {type(idx).__name__} and weights of type {type(w).__name__}, not tensors"
    if dtype_kind(idx) != "integer" or not w.is_floating_point():
        return f"holds {idx.dtype} indices and {w.dtype} weights, not integer indices and floating weights"
    if idx.dim() != 1 or idx.shape != w.shape:
        return f"holds indices of shape {tuple(idx.shape)} and weights of shape {tuple(w.shape)}, not one length"
    if idx.numel() and (int(idx.min()) < 0 or (num_examples is not None and int(idx.max()) >= num_examples)):
        where = "0 or more" if num_examples is None else f"in [0, {num_examples}), the run's training examples"
        return f"holds indices from {int(idx.min())} to {int(idx.max())}, not {where}"
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        return "holds weights that are negative, NaN or infinite"
    return None


def check_coreset_state(entry: Any, path: str | Path, num_examples: int | None = None) -> None:
    """Raise ``CheckpointError`` naming ``path`` if the checkpoint's ``coreset`` entry is damaged
    (``coreset_problem``), saying what to do: restore the file, or delete it and train the run from scratch."""
    problem = coreset_problem(entry, num_examples)
    if problem:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its 'coreset' entry (the saved selection) "
                              f"{problem} (a damaged or foreign file); restore the run's last.pt, or delete {path} "
                              "and train the run from scratch (the same command without --resume)")
