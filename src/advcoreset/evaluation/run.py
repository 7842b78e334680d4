"""``advcoreset eval RUN``: rebuild a run's model from its saved config and evaluate a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from advcoreset.attacks.lpips import LPIPS, alexnet_lpips
from advcoreset.checkpoint import CheckpointError, check_fits_data, check_state_dict, check_weights, load_checkpoint
from advcoreset.config import USER, Config
from advcoreset.config_checks import validate
from advcoreset.data import prepare_data
from advcoreset.data.datasets import dataset_record
from advcoreset.device import resolve_device
from advcoreset.evaluation.robust import default_pgd_alpha
from advcoreset.export import export_run_model
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
    run = Path(run)
    cfg = run_config(run)
    ckpt_path = run / CHECKPOINTS.get(checkpoint, checkpoint)
    ckpt = load_checkpoint(ckpt_path, device)
    state = ckpt["model"]
    if cfg.model.name not in available_models():
        spec = (cfg.model.user or {}).get("factory") or "package.module:factory"
        how = (f"`advcoreset eval --model {spec} --weights {run / 'model.safetensors'} --data {cfg.data.name} "
               f"--norm {cfg.objective.attack.norm} --eps {cfg.objective.attack.eps}`" if cfg.data.name != USER
               else "advcoreset.evaluation.evaluate(model, images, labels, norm=..., eps=...) in your code, where its "
               "Dataset lives")
        raise ValueError(f"{run} was trained with a model advcoreset cannot rebuild (model.name "
                         f"{cfg.model.name!r}); evaluate it with {how}")
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


def run_config(run: str | Path) -> Config:
    """The validated ``config.yaml`` of run folder ``run`` (a tampered one is refused, the field named)."""
    cfg_path = Path(run) / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: {run} is not an advcoreset run folder")
    return validate(Config.from_yaml(cfg_path))


def _data_signature(cfg: Config) -> tuple[int | None, int | None]:
    """(channels, classes) of the run's data, read from its test split; where its files cannot be read (an
    export on another machine), the channels of the dataset's record and classes None (not checked). A
    caller's Dataset: as config.yaml recorded it."""
    from advcoreset.data import load_dataset
    from advcoreset.data.datasets import DataError

    if cfg.data.name == USER:
        rec = cfg.data.user or {}
        return int(rec["shape"][0]), int(rec["num_classes"])
    try:
        test = load_dataset(cfg.data.name, cfg.data.root, train=False, image_size=cfg.data.image_size)
    except (DataError, OSError):
        shape = dataset_record(cfg.data.name).shape
        return (shape[0] if shape is not None else None), None
    return test.shape[0], test.num_classes


def _input_size(cfg: Config, channels: int) -> int:
    """The run's square image size: from the dataset's record, else (imagefolder) from its files; a caller's
    Dataset: its recorded height."""
    if cfg.data.name == USER:
        return int((cfg.data.user or {})["shape"][1])
    shape = dataset_record(cfg.data.name).shape
    return shape[1] if shape is not None else prepare_data(cfg.data, cfg.seed).train.shape[1]


def evaluate_run(run: str | Path, *, checkpoint: str = "last.pt", n: int | None = None,
                 pgd_steps: int | None = None, restarts: int | None = None, autoattack: bool = False,
                 aa_version: str = "standard", aa_n: int | None = None, perceptual: bool = False,
                 device: str | None = None, progress: Reporter | None = None) -> dict[str, Any]:
    """Clean, PGD-k (and AutoAttack, perceptual attacks) accuracy of a run's checkpoint on its test set.

    AutoAttack runs on the first ``aa_n`` of the test images (None: the run's ``eval.autoattack_n``, or all
    ``n`` when ``n`` is given).

    Returns a JSON-serialisable dict naming the checkpoint, the number of images and every budget used.
    ``progress``: a reporter (``advcoreset.progress``) for each attack; None: silent."""
    from advcoreset.evaluation import evaluate
    for flag, value in (("n", n), ("pgd_steps", pgd_steps), ("restarts", restarts), ("aa_n", aa_n)):  # issue 11
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1 or None (the run's config), got {value}")
    dev = resolve_device(device or "auto")
    model, cfg = load_run_model(run, checkpoint, dev)
    if cfg.data.name == USER:
        raise ValueError(f"{run} was trained on a Dataset passed to train() ({(cfg.data.user or {}).get('class')}), "
                         "which the command line cannot load: evaluate in Python with advcoreset.evaluation."
                         "evaluate(advcoreset.load_model(RUN), images, labels, norm=..., eps=...)")
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
                        autoattack=autoattack, aa_n=aa_n or (e.autoattack_n if n is None else n),
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
    validation score for ``best``. A run of a caller's own module (``model.name: user``) exports its weights
    with model.json naming no architecture (the module's class and factory, and a note on rebuilding it)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
    cfg = run_config(run)
    model: nn.Module | dict[str, torch.Tensor]
    if cfg.model.name == USER:
        model, shape = _own_weights(run, checkpoint), _run_shape(cfg)
    else:
        model, cfg = load_run_model(run, checkpoint)
        c = cast(torch.Tensor, model.mean).shape[1]  # a buffer: load_run_model checked its shape
        shape = (c, _input_size(cfg, c), _input_size(cfg, c))
    results: dict[str, object] = {}
    res_path = Path(run) / "results.json"
    if checkpoint == "last" and res_path.is_file():
        results = json.loads(res_path.read_text())
    elif checkpoint == "best":
        best = load_checkpoint(Path(run) / CHECKPOINTS["best"])
        if "val_robust_acc" in best:
            results = {"val_robust_acc": best["val_robust_acc"]}
    return export_run_model(run, model, cfg, shape, _class_names(cfg), results, out=out, checkpoint=checkpoint,
                            num_classes=_data_signature(cfg)[1] if cfg.model.name == USER else None)


def _class_names(cfg: Config) -> list[str] | None:
    """The run's class names: a caller's Dataset's as recorded, a built-in dataset's from its test split (None
    where its files cannot be read: model.json then says class_names: null)."""
    from advcoreset.data import load_dataset
    from advcoreset.data.datasets import DataError

    if cfg.data.name == USER:
        return (cfg.data.user or {}).get("class_names")
    try:
        return load_dataset(cfg.data.name, cfg.data.root, train=False, image_size=cfg.data.image_size).classes
    except (DataError, FileNotFoundError):
        return None


def _run_shape(cfg: Config) -> tuple[int, int, int]:
    """(C, H, W) of the run's images: a caller's Dataset's as recorded, else the built-in dataset's."""
    if cfg.data.name == USER:
        c, h, w = (cfg.data.user or {})["shape"]
        return int(c), int(h), int(w)
    channels = _data_signature(cfg)[0]
    if channels is None:
        raise ValueError(f"the channel count of {cfg.data.name} is unknown without its files: set data.root")
    size = _input_size(cfg, channels)
    return channels, size, size


def _own_weights(run: str | Path, checkpoint: str) -> dict[str, torch.Tensor]:
    """The state dict of a caller's own module in the run's ``checkpoint``, checked (every entry a finite
    floating tensor) before it is written anywhere."""
    path = Path(run) / CHECKPOINTS[checkpoint]
    state = load_checkpoint(path).get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no model state dict; give the run's own last.pt or best.pt")
    check_weights(state, path)
    return state
