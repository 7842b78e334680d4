"""``advcoreset eval RUN``: rebuild a run's model from its saved config and evaluate a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from advcoreset.attacks.lpips import LPIPS, alexnet_lpips
from advcoreset.config import Config
from advcoreset.data import prepare_data
from advcoreset.data.datasets import dataset_record
from advcoreset.device import resolve_device
from advcoreset.evaluation.robust import default_pgd_alpha
from advcoreset.models import available_models, create_model
from advcoreset.objectives import threat_model
from advcoreset.progress import Reporter

CHECKPOINTS = {"last": "last.pt", "best": "best.pt"}


def eval_alpha(cfg: Config, steps: int) -> float:
    """Evaluation PGD step of a ``steps``-step attack: eval.pgd_alpha, else the one default
    (``evaluation.robust.default_pgd_alpha``: 2.5 eps / steps)."""
    a = cfg.objective.attack
    return cfg.eval.pgd_alpha if cfg.eval.pgd_alpha is not None else default_pgd_alpha(a.eps, a.norm, steps)


def load_run_model(run: str | Path, checkpoint: str = "last.pt",
                   device: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """The model of run folder ``run`` with the weights of ``checkpoint`` (last, best, or a file name in the
    run; read with weights_only=True). ValueError pointing to ``--model`` when the run's model is not one
    of advcoreset's architectures."""
    # the checkpoint format is training's (to move below both parts with the run folder's other rules)
    from advcoreset.training.checkpoint import (
        CheckpointError,
        check_fits_data,
        check_state_dict,
        check_weights,
        load_checkpoint,
    )

    run = Path(run)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: {run} is not an advcoreset run folder")
    cfg = Config.from_yaml(cfg_path).validate()  # a tampered config.yaml is refused, named
    ckpt_path = run / CHECKPOINTS.get(checkpoint, checkpoint)
    ckpt = load_checkpoint(ckpt_path, device)
    state = ckpt["model"]
    if cfg.model.name not in available_models():
        raise ValueError(f"{run} was trained with a model advcoreset cannot rebuild (model.name "
                         f"{cfg.model.name!r}); evaluate it with `advcoreset eval --model package.module:factory "
                         f"--weights {run / 'model.safetensors'} --data {cfg.data.name} --norm "
                         f"{cfg.objective.attack.norm} --eps {cfg.objective.attack.eps}`")
    if not (all(isinstance(state.get(k), torch.Tensor) for k in ("mean", "std", "head.weight"))
            and state["mean"].dim() == 4 and state["head.weight"].dim() == 2):
        raise CheckpointError(f"checkpoint {ckpt_path} is not a model of this run (no mean/std/head entries); "
                              "give a last.pt or best.pt written by advcoreset train, or evaluate your own module "
                              "with `advcoreset eval --model package.module:factory --weights FILE ...`")
    check_weights(state, ckpt_path)  # NaN/inf weights, a std of 0, a non-tensor entry: refused before any use
    check_fits_data(state, ckpt_path, *_data_signature(cfg), cfg.data.name)  # another dataset's model
    c = state["mean"].shape[1]
    num_classes = state["head.weight"].shape[0]
    size = _input_size(cfg, c)
    mean, std = state["mean"].flatten().tolist(), state["std"].flatten().tolist()
    model = create_model(cfg.model.name, c, num_classes, size, mean, std,
                         **({} if cfg.model.width is None else {"width": cfg.model.width}))
    check_state_dict(model, state, ckpt_path)  # another model's checkpoint, named
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def _data_signature(cfg: Config) -> tuple[int | None, int | None]:
    """(channels, classes) of the run's data, read from its test split; where its files cannot be read (an
    export on another machine), the channels of the dataset's record and classes None (not checked)."""
    from advcoreset.data import load_dataset
    from advcoreset.data.datasets import DataError

    try:
        test = load_dataset(cfg.data.name, cfg.data.root, train=False, image_size=cfg.data.image_size)
    except (DataError, OSError):
        shape = dataset_record(cfg.data.name).shape
        return (shape[0] if shape is not None else None), None
    return test.shape[0], test.num_classes


def _input_size(cfg: Config, channels: int) -> int:
    """The run's square image size: from the dataset's record, else (imagefolder) from its files."""
    shape = dataset_record(cfg.data.name).shape
    return shape[1] if shape is not None else prepare_data(cfg.data, cfg.seed).train.shape[1]


def evaluate_run(run: str | Path, *, checkpoint: str = "last.pt", n: int | None = None,
                 pgd_steps: int | None = None, restarts: int | None = None, autoattack: bool = False,
                 aa_version: str = "standard", perceptual: bool = False,
                 device: str | None = None, progress: Reporter | None = None) -> dict[str, Any]:
    """Clean, PGD-k (and AutoAttack, perceptual attacks) accuracy of a run's checkpoint on its test set.

    Returns a JSON-serialisable dict naming the checkpoint, the number of images and every budget used.
    ``progress``: a reporter (``advcoreset.progress``) for each attack; None: silent."""
    from advcoreset.evaluation import evaluate
    for flag, value in (("n", n), ("pgd_steps", pgd_steps), ("restarts", restarts)):  # issue 11
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1 or None (the run's config), got {value}")
    dev = resolve_device(device or "auto")
    model, cfg = load_run_model(run, checkpoint, dev)
    if n is not None:
        cfg.data.test_subset = n
    data = prepare_data(cfg.data, cfg.seed)
    a, e = cfg.objective.attack, cfg.eval
    steps = pgd_steps if pgd_steps is not None else e.pgd_steps
    restarts = restarts if restarts is not None else e.pgd_restarts
    res: dict[str, Any] = {"run": str(run), "checkpoint": checkpoint, "n_test": int(data.test.labels.numel()),
                           "norm": a.norm, "eps": a.eps, "pgd_steps": steps, "pgd_alpha": eval_alpha(cfg, steps),
                           "pgd_restarts": restarts, "precision": "fp32"}  # attacks never run in bf16
    res.update(evaluate(model, data.test.images, data.test.labels, norm=a.norm, eps=a.eps, pgd_steps=steps,
                        pgd_alpha=e.pgd_alpha, pgd_restarts=restarts,
                        autoattack=autoattack, aa_n=e.autoattack_n if n is None else n,
                        aa_version=aa_version, batch_size=e.batch_size, device=dev, progress=progress))
    if perceptual or "perceptual_bound" in threat_model(cfg.objective):
        res["union"] = union_report(model, data.test.images, data.test.labels, cfg, aa_version=aa_version,
                                    device=dev, progress=progress)
    return res


def perceptual_distance(cfg: Config, loaded: LPIPS | None = None) -> tuple[LPIPS | None, str]:
    """The LPIPS the run's PAT config names: (None, "self-bound") or (AlexNet LPIPS, "alexnet:<path>").
    ``loaded``: that AlexNet LPIPS if the caller already holds it (it is not read again)."""
    if cfg.objective.pat.lpips == "self":
        return None, "self-bound"
    lpips = loaded if loaded is not None else alexnet_lpips(cfg.objective.pat.lpips)
    return lpips, f"alexnet:{cfg.objective.pat.lpips}"


def union_report(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: Config, *,
                 aa_version: str = "standard", device: torch.device | str | None = None,
                 progress: Reporter | None = None) -> dict[str, Any]:
    """PAT's evaluation: l_inf and l_2 AutoAttack (where radii are set) and PPGD / LPA at the PAT bound,
    each alone and as a union (robust to all at once)."""
    from advcoreset.evaluation.union import ThreatModel, union_accuracy

    a, e, p = cfg.objective.attack, cfg.eval, cfg.objective.pat
    threats = []
    linf = e.union_linf_eps if e.union_linf_eps is not None else (a.eps if a.norm == "linf" else None)
    if linf:
        threats.append(ThreatModel("linf_autoattack", "autoattack", "linf", linf))
    if e.union_l2_eps:
        threats.append(ThreatModel("l2_autoattack", "autoattack", "l2", e.union_l2_eps))
    steps = max(p.steps, 10)
    lpips, name = perceptual_distance(cfg)
    threats += [ThreatModel(att, "perceptual", eps=p.bound, attack=att, steps=steps, lpips=lpips, lpips_name=name)
                for att in ("ppgd", "lpa")]
    return union_accuracy(model, images, labels, threats, aa_version=aa_version, batch_size=e.batch_size,
                          device=device, progress=progress)


def export_run(run: str | Path, out: str | Path, checkpoint: str = "last") -> Path:
    """``advcoreset export``: write a run's ``checkpoint`` (last or best) as model.safetensors + model.json
    (+ model_arch.py) into ``out``. Accuracies come from results.json for ``last`` and from the checkpoint's
    validation score for ``best``."""
    import json

    from advcoreset.data import load_dataset
    from advcoreset.data.datasets import DataError
    from advcoreset.models.export import export_run_model

    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
    model, cfg = load_run_model(run, checkpoint)
    c = cast(torch.Tensor, model.mean).shape[1]  # a buffer: load_run_model checked its shape
    size = _input_size(cfg, c)
    try:
        classes: list[str] | None = load_dataset(cfg.data.name, cfg.data.root, train=False,
                                                 image_size=cfg.data.image_size).classes
    except (DataError, FileNotFoundError):
        classes = None  # the weights are still exportable; model.json then says class_names: null
    results: dict[str, object] = {}
    res_path = Path(run) / "results.json"
    if checkpoint == "last" and res_path.is_file():
        results = json.loads(res_path.read_text())
    elif checkpoint == "best":
        from advcoreset.training.checkpoint import load_checkpoint

        best = load_checkpoint(Path(run) / CHECKPOINTS["best"])
        if "val_robust_acc" in best:
            results = {"val_robust_acc": best["val_robust_acc"]}
    return export_run_model(run, model, cfg, (c, size, size), classes, results, out=out, checkpoint=checkpoint)
