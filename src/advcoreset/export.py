"""Model files a user can load without this library: ``model.safetensors`` + ``model.json`` (+ ``model_arch.py``).

An export folder holds:

- ``model.safetensors``: the state dict under its plain names (``stages.0.0.weight``, ``head.bias``,
  ``mean``, ``std``...), every tensor contiguous on the CPU;
- ``model.json``: ``architecture`` (registered name, or null for a model advcoreset did not build),
  ``arguments`` (the factory's keyword arguments: in_channels, num_classes, input_size, mean, std and
  width when set), ``input_shape`` [C, H, W], ``mean``/``std`` per channel (applied inside ``forward``:
  the model takes pixels in [0, 1]), ``num_classes``, ``class_names``, ``threat_model`` (objective, norm,
  eps, perceptual bound for PAT), ``accuracy`` (the run's final test accuracies), ``source``;
- ``model_arch.py``: the built-in architectures in plain PyTorch (written from this package's own source
  files, with no advcoreset import), so ``build(json.load(...))`` needs nothing but torch.

``docs/export.md`` has the five-line snippet; ``load_model`` does the same with the library.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcoreset.config import USER, Config
from advcoreset.fileperm import as_created
from advcoreset.models import MODELS, create_model
from advcoreset.objectives import threat_model
from advcoreset.safeload import CheckpointError, check_state_dict, check_weights, load_weights_only

WEIGHTS, META, ARCH = "model.safetensors", "model.json", "model_arch.py"
FORMAT = "advcoreset-model/1"
_SOURCES = ("advcoreset.models.base", "advcoreset.models.cnn", "advcoreset.models.resnet")
"""Modules whose source becomes ``model_arch.py``; each may import torch and each other only."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``torch.compile`` / ``DistributedDataParallel`` wrapper (itself otherwise)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors can store it: detached, contiguous CPU tensors, plain names
    (wrappers looked through, so no ``module.`` prefix)."""
    return {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}


def standalone_source() -> str:
    """Text of ``model_arch.py``: the built-in architectures with imports of torch only, and
    ``build(meta) -> nn.Module`` for a parsed ``model.json``. Raises RuntimeError if a source module
    imports anything of advcoreset outside ``_SOURCES`` (the file would then not stand alone)."""
    bodies = []
    for name in _SOURCES:
        text = Path(sys.modules[name].__file__ or "").read_text()
        kept = []
        for line in text.splitlines():
            if line.startswith("from __future__"):
                continue
            m = re.match(r"(from|import) (advcoreset[\w.]*)", line)
            if m:
                if m.group(2) not in _SOURCES:
                    raise RuntimeError(f"{name} imports {m.group(2)}: {ARCH} would not stand alone")
                continue
            kept.append(line)
        bodies.append(f"# ---- from {name} ----\n" + "\n".join(kept))
    builders = {n: fn.__name__ for n, fn in ((n, MODELS.get(n)) for n in MODELS.names())
                if getattr(fn, "__module__", "") in _SOURCES}
    table = "".join(f"    {n!r}: {f},\n" for n, f in builders.items())
    return (f'"""Built-in architectures of advcoreset in plain PyTorch (written by advcoreset\'s export).\n\n'
            f'build(meta) rebuilds the model that {META} describes; load {WEIGHTS} into it."""\n\n'
            "from __future__ import annotations\n\n" + "\n\n".join(bodies)
            + f"\n\nBUILDERS = {{\n{table}}}\n\n\n"
            "def build(meta: dict) -> nn.Module:\n"
            f'    """An untrained model from parsed {META} (its ``architecture`` and ``arguments``)."""\n'
            '    return BUILDERS[meta["architecture"]](**meta["arguments"])\n')


def is_exportable_architecture(name: str | None) -> bool:
    """Whether ``model_arch.py`` can rebuild the registered model ``name``."""
    return name in MODELS.names() and getattr(MODELS.get(name), "__module__", "") in _SOURCES


def _fits(architecture: str | None, args: dict[str, Any], state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` has exactly the names and shapes of ``architecture(**args)`` (built on the meta
    device: no memory, no init), so model.json never names an architecture the weights do not fit (a
    user's own module trained under a config whose model.name is a built-in one)."""
    try:
        with torch.device("meta"):
            ref = create_model(str(architecture), args["in_channels"], args["num_classes"], args["input_size"],
                               args.get("mean"), args.get("std"),
                               **{k: v for k, v in args.items()
                                  if k not in ("in_channels", "num_classes", "input_size", "mean", "std")})
    except (KeyError, TypeError, ValueError):
        return False
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    return want == {k: tuple(v.shape) for k, v in state.items()}


def _rebuild_note(architecture: str | None, given: dict[str, Any] | None) -> str | None:
    """model.json's note for weights ``model_arch.py`` cannot rebuild: a caller's own module (``given``: its
    class, module and factory) or weights that do not fit the built-in ``architecture``; None otherwise."""
    if given is not None:
        factory = given.get("factory")
        how = f"{factory}() builds it" if factory else "no factory was recorded: train(..., model_factory=...)"
        return (f"a model of your own ({given.get('class')} from {given.get('module')}), not an advcoreset "
                f"architecture: rebuild it with your own code ({how}), then load {WEIGHTS} into it")
    if architecture is not None:
        return (f"the weights are not those of advcoreset's built-in {architecture!r}: rebuild the model "
                f"with your own code, then load {WEIGHTS}")
    return None


def export_model(model: nn.Module | dict[str, torch.Tensor], out: str | Path, *, architecture: str | None,
                 arguments: dict[str, Any], input_shape: Sequence[int], class_names: Sequence[str] | None = None,
                 threat_model: dict[str, Any] | None = None, accuracy: dict[str, float] | None = None,
                 source: dict[str, Any] | None = None, num_classes: int | None = None,
                 given: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors``, ``model.json`` and (for a built-in architecture) ``model_arch.py``.

    Args:
        model: maps (B, *input_shape) pixels in [0, 1] to (B, num_classes) logits; or its state dict.
        architecture: registered name, or None for a model advcoreset cannot rebuild.
        arguments: keyword arguments of the architecture's factory (``create_model`` minus the name).
        input_shape: (C, H, W).
        num_classes: the logits' width when ``arguments`` do not say it (a model of the caller's).
        given: a caller's own module as ``config.yaml`` records it (class, module, factory): written as
            model.json's ``model``, with a note saying how to rebuild it; the architecture is then null.
    Returns the folder."""
    from safetensors.torch import save_file

    from advcoreset import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = plain_state_dict(model) if isinstance(model, nn.Module) else \
        {k: v.detach().cpu().contiguous() for k, v in model.items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    as_created(out / WEIGHTS)  # safetensors writes 0600
    args = dict(arguments)
    fits = given is None and is_exportable_architecture(architecture) and _fits(architecture, args, state)
    meta: dict[str, Any] = {
        "format": FORMAT, "advcoreset_version": __version__,
        "architecture": architecture if fits else None,
        "arguments": args, "input_shape": [int(s) for s in input_shape], "input_range": [0.0, 1.0],
        "mean": args.get("mean"), "std": args.get("std"),
        "num_classes": num_classes if num_classes is not None else args.get("num_classes"),
        "class_names": list(class_names) if class_names is not None else None,
        "threat_model": threat_model or {}, "accuracy": accuracy or {}, "source": source or {},
    }
    if given is not None:
        meta["model"] = dict(given)
    note = None if fits else _rebuild_note(architecture, given)
    if note is not None:
        meta["note"] = note
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    if meta["architecture"] is not None:
        (out / ARCH).write_text(standalone_source())
    return out


def threat_model_of(cfg: Config) -> dict[str, Any]:
    """The threat model a config trains for: objective, norm, eps (and PAT's perceptual bound)."""
    return threat_model(cfg.objective)


def run_accuracy(results: dict[str, Any]) -> dict[str, float]:
    """The ``test_*_acc`` entries of a run's final results without the prefix (clean_acc, pgd20_acc...),
    and ``val_*_acc`` entries as they are (a best checkpoint's validation score)."""
    return {k[5:] if k.startswith("test_") else k: float(v) for k, v in results.items()
            if k.startswith(("test_", "val_")) and k.endswith("_acc") and isinstance(v, (int, float))}


def _builtin_arguments(model: nn.Module, cfg: Config, input_shape: Sequence[int]) -> dict[str, Any]:
    """The factory arguments of a built-in ``ImageClassifier`` (mean/std read from its buffers)."""
    c, h, _ = input_shape
    inner = _unwrap(model)
    args: dict[str, Any] = {"in_channels": int(c), "num_classes": int(getattr(inner, "num_classes", 0)) or None,
                            "input_size": int(h)}
    for key in ("mean", "std"):
        buf = getattr(inner, key, None)
        args[key] = buf.flatten().tolist() if isinstance(buf, torch.Tensor) else None
    if cfg.model.width is not None:
        args["width"] = cfg.model.width
    return args


def export_run_model(run_dir: str | Path, model: nn.Module | dict[str, torch.Tensor], cfg: Config,
                     input_shape: Sequence[int], class_names: Sequence[str] | None,
                     results: dict[str, Any] | None = None, out: str | Path | None = None, checkpoint: str = "last",
                     num_classes: int | None = None) -> Path:
    """Export a run's model into ``out`` (default: the run folder itself).

    model: the run's classifier (an ``ImageClassifier`` for built-in architectures: mean/std are read from
    its buffers), or, for a caller's own module (``model.name: user``), it or its state dict: model.json then
    names no architecture and records the module (class, factory) with a note on rebuilding it.
    input_shape: (C, H, W); results: the run's final metrics (``results.json``); num_classes: the logits' width.
    A caller's Dataset (``data.name: user``) is recorded in ``source.data``."""
    mine = cfg.model.name == USER
    if not mine and not isinstance(model, nn.Module):
        raise TypeError("a built-in architecture is exported from its module (mean/std are read from it)")
    args = {} if mine or not isinstance(model, nn.Module) else _builtin_arguments(model, cfg, input_shape)
    source = {"run": str(run_dir), "checkpoint": checkpoint, "dataset": cfg.data.name,
              **({"data": cfg.data.user} if cfg.data.name == USER else {})}
    return export_model(model, out if out is not None else run_dir, architecture=None if mine else cfg.model.name,
                        arguments=args, input_shape=input_shape, class_names=class_names,
                        threat_model=threat_model_of(cfg), accuracy=run_accuracy(results or {}), source=source,
                        num_classes=num_classes, given=cfg.model.user if mine else None)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """Parsed ``model.json`` of an export folder; FileNotFoundError naming the folder when it is absent,
    ``CheckpointError`` naming the file when it is not a JSON object."""
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not an exported model folder (make one with "
                                "`advcoreset export RUN --out DIR`)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}): restore it or export the run "
                              "again (`advcoreset export RUN --out DIR`)") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}, not the object advcoreset export "
                              "writes: restore it or export the run again")
    return meta


MAX_PARAMETERS = 2_000_000_000
"""Most parameters a model.json may describe: far above any built-in model at a sane width (wrn34_10 has
46M), far below what would exhaust memory; checked on the meta device before anything is allocated."""

_SIZES = ("in_channels", "num_classes", "input_size")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_meta(meta: dict[str, Any], path: str | Path) -> tuple[str, dict[str, Any]]:
    """(architecture, factory arguments) of a parsed model.json, or ``CheckpointError`` naming ``path`` and the
    field: an unknown architecture, a missing or extra argument, a size that is not a positive integer, mean/std
    of the wrong length or out of range (std > 0, mean in [0, 1]), an ``input_shape`` that disagrees, or a
    model of more than ``MAX_PARAMETERS`` (counted on the meta device: nothing is allocated)."""
    import inspect

    def refuse(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: field {field!r} {problem}; restore the file or export the run again "
                               "(`advcoreset export RUN --out DIR`)")

    arch = meta.get("architecture")
    if arch is None:
        given = meta.get("model")
        factory = given.get("factory") if isinstance(given, dict) else None
        how = f" ({factory}() builds it)" if isinstance(factory, str) else ""
        raise CheckpointError(f"{path} names no built-in architecture (the model was not built by "
                              f"advcoreset): rebuild it with your own code{how} and load "
                              f"{Path(path).parent / WEIGHTS} with safetensors.torch.load_file")
    if not isinstance(arch, str) or not is_exportable_architecture(arch):
        names = [n for n in MODELS.names() if is_exportable_architecture(n)]
        raise refuse("architecture", f"is {arch!r}, not a built-in architecture (one of {', '.join(names)})")
    args = meta.get("arguments")
    if not isinstance(args, dict):
        raise refuse("arguments", f"is a {type(args).__name__}, not an object of the factory's arguments")
    params = inspect.signature(MODELS.get(arch)).parameters
    extra = sorted(set(args) - set(params))
    if extra:
        raise refuse(f"arguments.{extra[0]}", f"is not an argument of {arch} (it takes {', '.join(params)})")
    for name in _SIZES:
        if not _is_count(args.get(name)):
            raise refuse(f"arguments.{name}", f"is {args.get(name)!r}, not a positive integer")
    for name in set(args) - {*_SIZES, "mean", "std"}:
        value = args[name]
        if not (_is_count(value) or (value is None and params[name].default is None)):
            raise refuse(f"arguments.{name}", f"is {value!r}, not a positive integer")
    c = args["in_channels"]
    for name, lo, hi in (("mean", 0.0, 1.0), ("std", 0.0, None)):
        value = args.get(name)
        if value is None:
            continue
        ok = (isinstance(value, list) and len(value) == c
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
        if not ok:
            raise refuse(f"arguments.{name}", f"is {value!r}, not a list of {c} finite numbers (one per channel)")
        if any(v < lo or (hi is not None and v > hi) or (hi is None and v <= lo) for v in value):
            rule = "in [0, 1] (the mean of pixels in [0, 1])" if hi is not None else "> 0 (inputs are divided by it)"
            raise refuse(f"arguments.{name}", f"is {value}; each entry must be {rule}")
    shape = meta.get("input_shape")
    size = args["input_size"]
    if shape is not None and shape != [c, size, size]:
        raise refuse("input_shape", f"is {shape!r} but the arguments describe {[c, size, size]}")
    try:
        with torch.device("meta"):
            ref = create_model(arch, **args)
    except Exception as e:  # noqa: BLE001 - any failure to build: the arguments are named, not torch's trace
        first = (str(e).splitlines() or [""])[0][:200]
        raise refuse("arguments", f"do not build a {arch} ({type(e).__name__}: {first})") from None
    n = sum(t.numel() for t in ref.state_dict().values())
    if n > MAX_PARAMETERS:
        sizes = {k: v for k, v in args.items() if k not in ("mean", "std")}
        raise refuse("arguments", f"describe a {arch} of {n:.2e} parameters ({sizes}), over the "
                      f"{MAX_PARAMETERS:.0e} a model file may hold")
    return arch, dict(args)


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported built-in model with the library and load its weights (eval mode).

    ``model.json`` is checked first (``check_meta``), then the weights (readable, every tensor finite, the
    normalisation valid, the names and shapes the architecture has): each failure a ``CheckpointError``
    naming the file. The model maps (B, C, H, W) pixels in [0, 1] (``model.json``'s input_shape) to
    (B, num_classes) logits."""
    meta = read_meta(folder)
    arch, args = check_meta(meta, Path(folder) / META)
    weights = Path(folder) / WEIGHTS
    state = load_weights_only(weights, "weights file")
    if not isinstance(state, dict):
        raise CheckpointError(f"weights file {weights} holds a {type(state).__name__}, not a state dict; "
                              "export the run again")
    check_weights(state, weights, "weights file")
    model = create_model(arch, **args)
    check_state_dict(model, state, weights, "weights file", against=f"the model of {Path(folder) / META}",
                     advice="export the run again (`advcoreset export RUN --out DIR`)")
    model.load_state_dict(state)
    return model.to(device).eval()


__all__ = ["ARCH", "MAX_PARAMETERS", "META", "WEIGHTS", "check_meta", "export_model", "export_run_model",
           "load_model", "plain_state_dict", "read_meta", "standalone_source", "threat_model_of"]
