"""Checks that need more than the config alone (the machine, the loaded data), run before any training."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config, ConfigError, ConfigTypeError, SelectionConfig
from advcoreset.data.formats import DataError
from advcoreset.evaluation.autoattack import square_l2_fits
from advcoreset.objectives.base import eval_mode

_BATCHWISE = ("craig", "gradmatch")


def check_device(name: str, what: str = "device") -> None:
    """Raise ``ConfigError`` unless the device ``name`` (auto, cpu, cuda, cuda:N) exists on this machine."""
    if name in ("auto", "cpu"):
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{what} {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type != "cuda":
        raise ConfigError(f"{what} {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"{what} {name!r} was asked for but CUDA is not available here; use cpu or auto")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"{what} {name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")


def _batches_needed(fraction: float) -> int:
    """The fewest batches n for which choosing ceil(fraction * n) of them leaves at least one out."""
    n = 2
    while math.ceil(round(fraction * n, 9)) >= n:
        n += 1
    return n


def check_selection_fits(cfg: SelectionConfig, labels: Tensor) -> None:
    """Batch-wise selection splits each class into batches of ``selection_batch_size`` and keeps
    ceil(fraction * batches) of them: a class with too few batches would be kept whole, silently training
    on all data at "fraction 0.3". Raise ``ConfigError`` naming the field when any class is that small.

    labels: (n,) int64 training labels."""
    if not cfg.batchwise or cfg.method not in _BATCHWISE or cfg.fraction >= 1 or labels.numel() == 0:
        return
    counts = torch.bincount(labels.cpu())
    present = counts[counts > 0]
    n_min = int(present.min())
    cls = int(torch.nonzero(counts == n_min)[0])
    need = _batches_needed(cfg.fraction)
    if math.ceil(n_min / cfg.selection_batch_size) < need:
        fit = max(1, n_min // need)
        raise ConfigError(f"selection.selection_batch_size {cfg.selection_batch_size} splits class {cls} "
                          f"({n_min} training images) into too few batches: fraction {cfg.fraction} would keep "
                          f"the whole class; use selection.selection_batch_size <= {fit}, or more data")


def check_classes(labels: Tensor, cfg: Config | None = None) -> None:
    """Refuse training data of one class (every label equal): a model that always answers that class scores
    100% clean and robust accuracy, a result that means nothing. Raises ``DataError`` naming the labels.

    labels: (n,) int64 training labels."""
    if labels.numel() == 0 or not bool((labels == labels[0]).all()):
        return
    hint = ""
    if cfg is not None and cfg.data.train_subset is not None:
        hint = f" (data.train_subset is {cfg.data.train_subset}: raise it)"
    raise DataError(f"the training labels are all {int(labels[0])}: {labels.numel()} image(s) of one class, on "
                    f"which any model that answers that class scores 100%; give training data with at least two "
                    f"classes{hint}")


def check_against_data(cfg: Config, labels: Tensor, image_shape: tuple[int, int, int], num_classes: int) -> None:
    """What the config asks of the loaded training data, checked before training rather than after it:
    more than one class (``check_classes``); batch-wise selection splits every class (``check_selection_fits``);
    AutoAttack at the end has the classes (>= 4, for APGD-T's targeted DLR loss) and, for l_2, an image size its
    Square attack can tile.

    labels: (n,) int64 training labels; image_shape: (C, H, W)."""
    check_classes(labels, cfg)
    check_selection_fits(cfg.selection, labels)
    e = cfg.eval
    if not e.autoattack:
        return
    if num_classes < 4:
        raise ConfigError(f"eval.autoattack needs at least 4 classes (APGD-T's targeted DLR loss); "
                          f"{cfg.data.name} has {num_classes}: set eval.autoattack=false")
    h, w = image_shape[1:]
    if cfg.objective.attack.norm == "l2" and e.autoattack_version == "standard" and not square_l2_fits(h, w):
        raise ConfigError(f"eval.autoattack: the l_2 Square attack cannot tile {h}x{w} images; set "
                          "eval.autoattack_version=fast or data.image_size to a size such as 28 or 32")


def check_model_and_optimizer(model: Any, optimizer: Any, sample: Tensor, num_classes: int) -> None:
    """Before any training: a caller's model gives (B, >= num_classes) logits on a sample batch, and a caller's
    optimiser holds parameters of that model only (else training would update nothing that is evaluated)."""
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with torch.no_grad(), eval_mode(model):
        out = model(sample)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < num_classes:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"the model's output on a batch of {sample.shape[0]} is {got}, but the data has labels "
                          f"0..{num_classes - 1}: give a model with (at least) {num_classes} outputs")
    if optimizer is None:
        return
    own = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
    if foreign:
        raise ConfigError(f"the optimizer holds {foreign} parameter(s) that are not the model's: build it over "
                          "model.parameters() (it would train another module and the run would report an "
                          "untrained model)")
