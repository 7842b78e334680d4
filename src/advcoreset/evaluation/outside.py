"""``advcoreset eval --model package.module:factory --weights FILE``: evaluate a classifier made elsewhere.

The model is any ``nn.Module`` that maps (B, C, H, W) pixels in [0, 1] to (B, num_classes) logits (it
normalises inside ``forward``); ``factory()`` builds it untrained and the weights are read without running
code (safetensors, or ``torch.load(weights_only=True)``). Before any attack, one forward pass on a test
batch checks the input shape and class count and fails with one line if they do not fit.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.attacks.lpips import LPIPS
from advcoreset.config import DataConfig, EvalConfig, PATConfig
from advcoreset.data import ImageArrays, load_dataset, stratified_order
from advcoreset.device import resolve_device
from advcoreset.evaluation.robust import evaluate, to_unit
from advcoreset.progress import Reporter, reporter_or_silent
from advcoreset.safeload import check_dtypes


def import_factory(spec: str) -> Callable[[], nn.Module]:
    """``"package.module:factory"`` -> the callable. The working folder is searched last, and only while the
    user's module is imported: a stray file there (``safetensors.py``, ``torch.py``) never shadows an
    installed package. ValueError naming the spec when it cannot be imported."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model {spec!r}: expected package.module:factory, e.g. my_models:build_net")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r} ({e}); run from the folder that "
                         "holds it or add it to PYTHONPATH") from e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--model {spec!r}: {module_name} has no callable {attr!r}")
    return fn


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file read with ``weights_only=True`` (a dict holding
    it under ``model`` or ``state_dict``, as checkpoints do, is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is reported with the file named
        raise ValueError(f"--weights {path} could not be read with weights_only=True ({type(e).__name__}: "
                         f"{e}); save a state dict (torch.save(model.state_dict(), ...)) or .safetensors") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"--weights {path} holds no state dict (a mapping of names to tensors)")
    return obj


def build_outside_model(spec: str, weights: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """``factory()`` of ``spec`` with the state dict of ``weights`` loaded strictly; eval mode on ``device``."""
    model = import_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    state = read_weights(weights)
    check_dtypes(model.state_dict(), state, weights, "--weights", against=f"the model of --model {spec!r}",
                 advice="save the model's own weights (torch.save(model.state_dict(), ...) or safetensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"--weights {weights} do not fit the model of --model {spec!r}: "
                         f"{' '.join(s.strip() for s in first[:3])}") from e
    return model.to(device).eval()


def check_model_fits(model: nn.Module, images: Tensor, num_classes: int, *, what: str, data: str,
                     device: torch.device | str, batch_size: int = 500) -> None:
    """One forward pass on the first test batch: ValueError if the model cannot take (B, C, H, W) images of
    ``data`` or does not return (B, num_classes) logits. images: (N, C, H, W) uint8 or float in [0, 1]."""
    x = to_unit(images[:batch_size], torch.device(device))
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0]
        raise ValueError(f"{what} cannot take {data} images: a batch of shape {tuple(x.shape)} (pixels in "
                         f"[0, 1]) failed with: {msg}") from e
    if not isinstance(out, Tensor) or tuple(out.shape) != (x.shape[0], num_classes):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{what} returned {shape} for a batch of {x.shape[0]} {data} images; {data} has "
                         f"{num_classes} classes, so logits must be ({x.shape[0]}, {num_classes})")


def eval_images(data: str, root: str | None, n: int | None) -> ImageArrays:
    """The evaluation images a run of ``data`` uses: the first ``n`` of the fixed, class-balanced test order
    (``prepare_data``'s test subset), or all test images if ``n`` is None."""
    test = load_dataset(data, root, train=False)
    if n is None or n >= len(test):
        return test
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    order = stratified_order(test.labels, torch.Generator().manual_seed(0))[:n].sort().values
    return ImageArrays(test.images[order], test.labels[order], test.classes)


def evaluate_outside(spec: str, weights: str | Path, *, data: str, norm: str, eps: float,
                     data_root: str | None = None, n: int | None = DataConfig.test_subset,
                     pgd_steps: int | None = None, pgd_alpha: float | None = None, restarts: int | None = None,
                     autoattack: bool = False, aa_version: str = "standard", aa_n: int | None = None,
                     perceptual: bool = False, perceptual_bound: float = PATConfig.bound,
                     lpips: str = PATConfig.lpips, batch_size: int = EvalConfig.batch_size,
                     device: str | None = None, progress: Reporter | None = None) -> dict[str, Any]:
    """Clean, PGD-k (restarts), optionally AutoAttack and PPGD/LPA accuracy of an outside model on the
    test set of ``data``; the same keys as ``advcoreset eval RUN``'s eval.json (``evaluate``'s result plus
    where it came from). eps is in [0, 1] pixel units."""
    e = EvalConfig()
    dev = resolve_device(device or "auto")
    test = eval_images(data, data_root, n)  # before the model: a data error needs no model import
    model = build_outside_model(spec, weights, dev)
    check_model_fits(model, test.images, test.num_classes, what=f"--model {spec}", data=data, device=dev,
                     batch_size=batch_size)
    dist = _perceptual_distance(model, spec, lpips) if perceptual else None  # fail before any attack
    steps = pgd_steps or e.pgd_steps
    res: dict[str, Any] = {"model": spec, "weights": str(weights), "data": data, "n_test": len(test),
                           "norm": norm, "eps": eps, "pgd_steps": steps, "pgd_restarts": restarts or e.pgd_restarts}
    res.update(evaluate(model, test.images, test.labels, norm=norm, eps=eps, pgd_steps=steps, pgd_alpha=pgd_alpha,
                        pgd_restarts=restarts or e.pgd_restarts, autoattack=autoattack,
                        aa_n=aa_n if aa_n is not None else e.autoattack_n, aa_version=aa_version,
                        batch_size=batch_size, device=dev, progress=progress))
    res["pgd_alpha"] = res["pgd"]["alpha"]
    if perceptual:
        res.update(_perceptual(model, test, dist, perceptual_bound, lpips, batch_size, progress))
    return res


def _perceptual_distance(model: nn.Module, spec: str, lpips: str) -> LPIPS | None:
    """The LPIPS of ``--lpips``: None for the model's own self-bound one (which needs ``feature_maps``)."""
    from advcoreset.attacks.lpips import alexnet_lpips

    if lpips == "self" and not hasattr(model, "feature_maps"):
        raise ValueError(f"--perceptual with the self-bound LPIPS needs {spec}'s feature_maps(x); pass "
                         "--lpips PATH (local AlexNet weights) instead")
    return None if lpips == "self" else alexnet_lpips(lpips)


def _perceptual(model: nn.Module, test: ImageArrays, dist: LPIPS | None, bound: float, lpips: str,
                batch_size: int, progress: Reporter | None) -> dict[str, Any]:
    from advcoreset.attacks.perceptual import perceptual_accuracy

    out: dict[str, Any] = {"perceptual_bound": bound,
                           "perceptual_lpips": "self-bound" if dist is None else f"alexnet:{lpips}"}
    for attack in ("ppgd", "lpa"):
        with reporter_or_silent(progress)(f"{attack} (LPIPS bound {bound:g})", 1) as task:
            out[f"{attack}_acc"] = perceptual_accuracy(model, test.images, test.labels, attack=attack,
                                                       bound=bound, steps=max(PATConfig.steps, 10), lpips=dist,
                                                       batch_size=batch_size)
            task.update(1, note=f"accuracy {out[f'{attack}_acc']:.4f}")
    return out
