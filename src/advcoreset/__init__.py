"""advcoreset: adversarial coreset selection for efficient robust training.

The PyTorch-facing API (imported on first use, so ``import advcoreset`` stays light):

- ``train(config, *, model=None, train_set=None, test_set=None, optimizer=None)``: a whole run.
- ``CoresetLoader(dataset, model, objective, method=..., fraction=...)``: the coreset lifecycle for a
  training loop of one's own; iterating gives one epoch of (x, y, w) batches (a ``DataLoader`` over a
  ``CoresetSampler`` underneath: DataLoader arguments pass through).
- ``select_coreset(model, dataset, objective, method=..., fraction=...)``: one selection round.
- ``load_model(folder)``: an exported model (``model.safetensors`` + ``model.json``), in eval mode.
- ``load_config(path, overrides)``: defaults, a YAML file, ``key=value`` overrides, validated (``Config``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advcoreset.config import Config, ConfigError, ConfigTypeError

if TYPE_CHECKING:
    from torch import nn

    from advcoreset.config_checks import load_config
    from advcoreset.coreset import CoresetLoader, CoresetSampler, select_coreset
    from advcoreset.models.adapter import LastLayerError

__all__ = ["Config", "ConfigError", "CoresetCallback", "CoresetLoader", "CoresetSampler", "LastLayerError",
           "load_config", "load_model", "select_coreset", "train"]
__version__ = "0.1.0"

_LAZY = {"load_config": "advcoreset.config_checks",
         "CoresetLoader": "advcoreset.coreset", "CoresetSampler": "advcoreset.coreset",
         "select_coreset": "advcoreset.coreset",
         "LastLayerError": "advcoreset.models.adapter", "CoresetCallback": "advcoreset.coreset.lightning"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'advcoreset' has no attribute {name!r}")


def train(config: Config | str | Path | dict[str, Any] | None = None, *, model: Any = None, train_set: Any = None,
          test_set: Any = None, optimizer: Any = None, resume: bool = False,
          selection_set: Any = None, scheduler: Any = None, keys: Any = None,
          model_factory: str | None = None) -> dict[str, Any]:
    """Train and evaluate one run; returns the results dict (``test_clean_acc``, ``test_pgd{k}_acc``, times...).

    Args:
        config: a Config, a YAML path, a dict of config sections, or None for the defaults.
        model: any nn.Module mapping (B, C, H, W) floats in [0, 1] to logits and ending in an nn.Linear (or
            timm's ``forward_head``/``get_classifier``); None: ``config.model.name``. Recorded in config.yaml as
            ``model.name: user`` with its class (``model.user``); ``model.name`` / ``model.width`` must stay unset.
        model_factory: "package.module:function" that builds ``model`` (untrained), recorded in config.yaml and
            model.json so the exported weights can be loaded into it.
        train_set, test_set: map-style Datasets of (image (C, H, W) uint8 or float in [0, 1], int label), any
            channel count and size; None: ``config.data.name``. ``data.train_subset``, ``val_size``,
            ``test_subset``, ``augment`` (none, crop, crop_flip) and ``crop_padding`` apply as to built-in data;
            ``data.name``, ``root``, ``image_size`` and augment ``auto`` are refused. Recorded as
            ``data.name: user`` with the sets' classes, sizes, shape and classes (``data.user``).
        optimizer: an optimiser over ``model``'s parameters; None: ``config.optim.name``. Its groups keep their
            own learning rates: a config given as a dict without ``optim.schedule`` trains at those rates
            (schedule ``none``); a schedule set explicitly (or a Config's) scales each group's rate by its shape.
        scheduler: an LR scheduler of ``optimizer``, stepped after every optimiser step; needs schedule ``none``
            (the default for a dict config with an optimizer).
        selection_set: ``train_set`` without its random augmentation (same items, same order): the selection
            pass reads it, so the coreset is chosen on the images themselves, not on augmented views.
        keys: (image key, label key) when the datasets' items are dicts (Hugging Face ``datasets`` style),
            e.g. ``("image", "label")``; see ``advcoreset.data.keyed``.
    """
    from advcoreset.config_checks import load_config, validate
    from advcoreset.training.trainer import train as run

    if not (config is None or isinstance(config, (str, Path, dict, Config))):
        raise ConfigTypeError(f"config must be a Config, a YAML path, a dict of config sections or None, got "
                              f"{type(config).__name__}")
    if config is None or isinstance(config, (str, Path)):
        cfg = load_config(config)
    elif isinstance(config, dict):
        if optimizer is not None and "schedule" not in (config.get("optim") or {}):
            config = {**config, "optim": {**(config.get("optim") or {}), "schedule": "none"}}
        cfg = validate(Config.from_dict(config))
    else:
        cfg = config
    return run(cfg, resume=resume, model=model, train_set=train_set, test_set=test_set, optimizer=optimizer,
               selection_set=selection_set, scheduler=scheduler, keys=keys, model_factory=model_factory)


def load_model(folder: Any, device: Any = "cpu") -> nn.Module:
    """Rebuild an exported model (a run folder, or ``advcoreset export``'s --out) with its weights, in eval
    mode: (B, C, H, W) pixels in [0, 1] -> (B, num_classes) logits. See ``advcoreset.export``."""
    from advcoreset.export import load_model as _load

    return _load(folder, device)
