"""The parts a caller brings to ``train()`` (a Dataset, a model): which ``data.*`` / ``model.*`` settings apply to
them, and what the saved config records of them, so that ``config.yaml`` (and ``model.json``) say what ran.

A setting that applies is honoured as for the built-in parts (``training.build.user_data``: ``train_subset``,
``val_size``, ``test_subset``, ``augment`` crop / crop_flip, ``crop_padding``); one that cannot apply is
refused before any work, with one line naming it and what to do. The saved config then names the parts
``user`` and describes them in the section's ``user`` field (``record_given``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from advcoreset.config import USER, Config, ConfigError, DataConfig, ModelConfig
from advcoreset.config_checks import validate
from advcoreset.training.build import RunData

_DATA, _MODEL = DataConfig(), ModelConfig()
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _described(record: Any) -> str:
    """A saved part's record in a few words (class and size), for messages."""
    if not isinstance(record, dict):
        return "not described"
    size = f", {record['size']} items" if "size" in record else ""
    return f"a {record.get('class', '?')}{size}"


def _data_problem(d: DataConfig) -> str | None:
    """The first ``data.*`` setting a caller's Dataset cannot honour, as a one-line message; None if none."""
    if d.name not in (_DATA.name, USER):
        return (f"data.name={d.name} names a built-in dataset, but train_set= brings your own: drop data.name (the "
                "run records your Dataset as data.name user) or drop train_set")
    if d.root is not None:
        return "data.root locates a built-in dataset's files; your Dataset reads its own: drop data.root"
    if d.image_size is not None:
        return ("data.image_size resizes imagefolder images; resize in your Dataset (e.g. a Resize transform) and "
                "drop data.image_size")
    if d.augment == "auto":
        return ("data.augment=auto picks by built-in dataset name; for your Dataset set none (its own transforms "
                "only), crop or crop_flip (the built-in augmentation of every training batch)")
    return None


def _model_problem(m: ModelConfig) -> str | None:
    """The first ``model.*`` setting a caller's module cannot honour, as a one-line message; None if none."""
    if m.name not in (_MODEL.name, USER):
        return (f"model.name={m.name} builds a built-in model, but model= brings your own: drop model.name (the run "
                "records your module as model.name user) or drop model=")
    if m.width is not None:
        return "model.width sizes a built-in model; yours is as you built it: drop model.width"
    return None


def check_given(cfg: Config, *, model: Any, train_set: Any, data: Any, factory: str | None) -> None:
    """Before any work: ``ConfigError`` for a setting the caller's Dataset or model would ignore, for a config
    recorded with a caller's part (``data.name`` / ``model.name`` user) when that part is not passed again, and
    for a ``factory`` that is not "package.module:function" or comes without its model."""
    if train_set is None and data is None and cfg.data.name == USER:
        raise ConfigError(f"data.name is user: this config ran on a Dataset passed to train() "
                          f"({_described(cfg.data.user)}); pass it again (train(config, train_set=..., "
                          "test_set=...)) or set data.name to a built-in dataset")
    if model is None and cfg.model.name == USER:
        raise ConfigError(f"model.name is user: this config ran with a model passed to train() "
                          f"({_described(cfg.model.user)}); pass it again (train(config, model=...)) or set "
                          "model.name to a built-in model")
    if factory is not None and (model is None or not isinstance(factory, str) or not _FACTORY.fullmatch(factory)):
        raise ConfigError(f"model_factory={factory!r}: give the 'package.module:function' that builds model= "
                          "(recorded in config.yaml and model.json), together with model=")
    problem = (_data_problem(cfg.data) if train_set is not None else None) or (
        _model_problem(cfg.model) if model is not None else None)
    if problem:
        raise ConfigError(problem)


def _class_of(obj: Any) -> str:
    return type(obj).__name__


def data_record(train_set: Any, test_set: Any, keys: Sequence[str] | None, rd: RunData) -> dict[str, Any]:
    """What ``config.yaml`` says of a caller's Datasets: classes of the sets, their sizes as given, the image
    shape [C, H, W], the class count (and names, where the Dataset has them) and the item keys."""
    return {"class": _class_of(train_set), "size": len(train_set), "test_class": _class_of(test_set),
            "test_size": len(test_set), "shape": [int(s) for s in rd.shape], "num_classes": int(rd.num_classes),
            "class_names": rd.classes, "keys": None if keys is None else [str(k) for k in keys]}


def model_record(model: nn.Module, factory: str | None) -> dict[str, Any]:
    """What ``config.yaml`` and ``model.json`` say of a caller's module: its class and module (inside a
    ``torch.compile`` wrapper), the factory that builds it when the caller named one, its parameter count."""
    inner = getattr(model, "_orig_mod", model)
    return {"class": _class_of(inner), "module": type(inner).__module__, "factory": factory,
            "parameters": int(sum(p.numel() for p in inner.parameters()))}


def record_given(cfg: Config, *, model: nn.Module | None, factory: str | None, train_set: Any, test_set: Any,
                 keys: Sequence[str] | None, rd: RunData) -> Config:
    """``cfg`` (not changed) as a new Config that names the caller's parts ``user`` and describes them."""
    d = cfg.to_dict()
    if train_set is not None:
        d["data"].update(name=USER, user=data_record(train_set, test_set, keys, rd))
    if model is not None:
        d["model"].update(name=USER, user=model_record(model, factory))
    return validate(Config.from_dict(d))
