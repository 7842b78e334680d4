"""The built-in training run: parts built from one ``Config``, the coreset lifecycle in a ``CoresetLoader``.

The loop names no attack, objective, selector or dataset: the config names them, the registries build
them, and each part carries its own defaults (a selector its weight rule, an objective its extra
evaluation, a dataset record its statistics and augmentation). Every epoch appends to ``metrics.jsonl``
and rewrites ``last.pt`` atomically; ``resume=True`` continues from ``last.pt`` and reaches bit-identical
weights on CPU. Under ``torchrun`` (a world > 1) the loss runs through DistributedDataParallel, the coreset
loader and evaluation are the sharded ones of ``training.ddp``, and rank 0 alone writes files.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config, ConfigError, ConfigTypeError
from advcoreset.config_checks import validate
from advcoreset.coreset import CoresetLoader, run_selection, selection_gradients
from advcoreset.data import DataSplits
from advcoreset.data.sources import TensorSource
from advcoreset.device import resolve_device
from advcoreset.evaluation.run import eval_alpha
from advcoreset.models.export import export_run_model
from advcoreset.objectives import Objective, build_objective, build_selection_objective
from advcoreset.optimizers import build_optimizer
from advcoreset.precision import legacy_precision, precision_record, resolve_precision
from advcoreset.progress import Reporter, make_progress, silent
from advcoreset.selection import Selection, build_selector
from advcoreset.training.build import RunData, builtin_data, builtin_model, user_data
from advcoreset.training.checkpoint import (
    check_optimizer_state,
    check_resumable,
    check_state_dict,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from advcoreset.training.distributed import (
    check_agreement,
    convert_sync_bn,
    default_threads,
    init_distributed,
    seed_rank,
    shutdown,
    sum_counts,
    wrap_ddp,
)
from advcoreset.training.epoch import EpochContext, TrainingError, train_epoch
from advcoreset.training.evaluate import evaluate_model
from advcoreset.training.given import check_given, record_given
from advcoreset.training.logging import MetricsLog, progress_mode
from advcoreset.training.preflight import check_against_data, check_model_and_optimizer
from advcoreset.training.report import epoch_line, final_line
from advcoreset.training.run_folder import final_evaluation, finished_results, write_json_atomic

__all__ = ["BEST", "CHECKPOINT", "FORMAT_VERSION", "RunState", "Trainer", "TrainingError", "eval_alpha",
           "resolve_device", "train"]

CHECKPOINT = "last.pt"
BEST = "best.pt"
FORMAT_VERSION = 1
"""Checkpoint layout: model, optimizer, epoch, rng {torch, data[, cuda]}, coreset {indices, weights} or None,
best_val, times, config."""
# Fields that may change between a killed run and its resumption without changing what is trained.
_RESUME_FREE = {"out_dir", "progress", "tensorboard", "threads", "eval", "device", "amp"}
"""``amp`` is checked as the precision it resolves to (``auto`` and ``true`` can mean the same)."""


@dataclass
class RunState:
    epoch: int = 0
    """Epochs completed."""
    best_val: float = -1.0
    times: dict[str, float] = field(default_factory=dict)
    """Cumulative seconds: attack, update, data, selection_attack, selection_solver, eval, error_pass (the
    ``grad_error`` pass of a gradient-free selector: measured, not part of training)."""
    grad_errors: list[float] = field(default_factory=list)
    """The coreset's relative gradient error of every selection round so far (rounds without gradients,
    e.g. random, add none)."""


class Trainer:
    """Composes data, model, objective, optimiser and a ``CoresetLoader`` from one ``Config``.

    ``model`` (any classifier of (B, C, H, W) in [0, 1] to logits), ``train_set``/``test_set`` (map-style
    Datasets of (image, int label)) and ``optimizer`` (over ``model``'s parameters) replace the parts the
    config would build; ``data`` replaces the dataset the config names with in-memory splits;
    ``selection_set``: ``train_set`` without its random augmentation, which the selection pass reads;
    ``keys``: (image key, label key) when those datasets' items are dicts (``data.keyed``); ``model_factory``:
    the "package.module:function" that builds ``model``, recorded in config.yaml and model.json. The saved
    config names a caller's Dataset / model ``user`` and describes it (``training.given``)."""

    def __init__(self, cfg: Config, data: DataSplits | None = None, *, model: nn.Module | None = None,
                 train_set: Any = None, test_set: Any = None, optimizer: torch.optim.Optimizer | None = None,
                 selection_set: Any = None, scheduler: Any = None, keys: Any = None,
                 model_factory: str | None = None) -> None:
        self.cfg = validate(cfg)
        if optimizer is not None and model is None:
            raise ConfigError("an optimizer was given without its model: pass model=... too")
        if scheduler is not None and (optimizer is None or cfg.optim.schedule != "none"):
            raise ConfigError("a scheduler needs its optimizer (optimizer=...) and optim.schedule=none: the loop "
                              "sets no learning rate then, the scheduler does")
        if data is not None and train_set is not None:
            raise ConfigError("pass either data (DataSplits) or train_set/test_set (Datasets), not both")
        if keys is not None and train_set is None:
            raise ConfigError("keys= names the fields of dict items of train_set/test_set: pass those Datasets too")
        check_given(cfg, model=model, train_set=train_set, data=data, factory=model_factory)
        self.device = resolve_device(cfg.device)
        self.env = init_distributed(cfg.device)
        if self.env.is_distributed:  # one device per local rank
            self.device = self.env.device
        threads = cfg.threads or default_threads(self.env)
        if threads:
            torch.set_num_threads(threads)
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(cfg.amp, self.device)
        """bf16 autocast or fp32 for the training step and the selection pass (evaluation is fp32)."""
        # the CPU's bf16 convolutions want channels_last (benchmarks/README.md, "Precision"); fp32 CPU runs keep
        # the contiguous layout, and their numbers, as before
        fast_layout = self.cuda or self.precision.dtype is not None
        self.memory_format = torch.channels_last if (fast_layout and cfg.channels_last) else torch.contiguous_format
        rd: RunData = (builtin_data(cfg, self.device, self.memory_format, data) if train_set is None
                       else user_data(cfg, train_set, test_set, self.device, self.memory_format, selection_set, keys))
        self.run_data = rd
        check_against_data(cfg, rd.source.labels.cpu(), rd.shape, rd.num_classes)  # before any training
        check_agreement(self.env, cfg.to_dict(), rd.source.labels)  # torchrun: every rank runs the same job
        self.progress: Reporter = make_progress(cfg.progress) if self.env.is_main else silent
        """Progress of the selection pass and the final evaluation (rank 0 only)."""
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model: nn.Module = (model if model is not None else builtin_model(cfg, rd)).to(self.device)
        if model is not None:  # a caller's model and optimiser, checked on a sample before any training
            check_model_and_optimizer(self.model, optimizer, rd.source.sample(2), rd.num_classes)
        # what config.yaml records: a caller's Dataset / model as such (data.name, model.name user), never a default
        self.cfg = record_given(cfg, model=model, factory=model_factory, train_set=train_set, test_set=test_set,
                                keys=keys, rd=rd)
        # Module.to takes memory_format (it forwards **kwargs to torch._C._nn._parse_to); its stubs omit it
        self.model = convert_sync_bn(self.model.to(memory_format=self.memory_format),  # type: ignore[call-overload]
                                     self.env, cfg.optim.sync_bn)
        self.ddp = wrap_ddp(self.model, self.env) if self.env.is_distributed else None
        """The DDP wrapper the loss runs through under torchrun; ``model`` stays the plain module (attacks,
        selection, evaluation, checkpoints without ``module.`` keys)."""
        self.objective: Objective = build_objective(cfg.objective)
        sel_objective = build_selection_objective(cfg.objective, cfg.selection)
        selector = build_selector(cfg.selection, cfg.seed)
        self.optimizer = optimizer or build_optimizer(self.model.parameters(), cfg.optim)
        self.base_lrs = None if optimizer is None else [float(g.get("initial_lr", g["lr"]))
                                                        for g in optimizer.param_groups]
        """A caller's optimiser keeps its groups' own rates: the schedule scales them (``optim.schedule``)."""
        self.scheduler = scheduler
        self.generator = torch.Generator().manual_seed(cfg.seed)
        s = cfg.selection
        kw: dict[str, Any] = dict(
            method=selector, fraction=s.fraction, warm_epochs=s.warm_epochs, interval=s.interval,
            weight_rule=None if cfg.optim.weight_norm == "auto" else cfg.optim.weight_norm,
            batch_size=cfg.optim.batch_size, grad_features=s.grad_features, generator=self.generator,
            **({} if s.pool is None else {"pool": s.pool}),
            device=self.device, autocast=self._autocast, num_classes=rd.num_classes,
            progress=lambda desc, total: self.progress(desc, total), measure_error=s.measure_error)
        if self.env.is_distributed:
            from advcoreset.training.ddp import ShardedCoresetLoader
            if s.measure_error is True:
                raise ConfigError("selection.measure_error=true is not supported under torchrun yet: set it to auto "
                                  "(off there) or false, or measure in one process")
            kw["measure_error"] = False
            self.loader: CoresetLoader = ShardedCoresetLoader(self.env, s, cfg.seed, rd.source, self.model,
                                                              sel_objective, amp=self.precision, **kw)
        else:
            self.loader = CoresetLoader(rd.source, self.model, sel_objective, **kw)
        self.state = RunState()

    @property
    def labels(self) -> Tensor:
        """(N,) int64 training labels on the device."""
        return self.loader.source.labels

    @property
    def images(self) -> Tensor:
        """(N, C, H, W) uint8 training images on the device (built-in datasets only)."""
        if not isinstance(self.loader.source, TensorSource):
            raise AttributeError("the training set is a Dataset read through a DataLoader: it has no image tensor")
        return self.loader.source.images

    def _autocast(self) -> AbstractContextManager[Any]:
        return self.precision.autocast()

    def _add_times(self, times: dict[str, float]) -> None:
        for k, v in times.items():
            self.state.times[k] = self.state.times.get(k, 0.0) + v

    # --------------------------------------------------------------- checkpoint
    def _checkpoint(self) -> dict[str, Any]:
        s, sel = self.state, self.loader.selection
        return {
            "format_version": FORMAT_VERSION, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "epoch": s.epoch, "rng": rng_state(self.generator),
            "coreset": None if sel is None else {"indices": sel.indices.cpu(), "weights": sel.weights.cpu()},
            "best_val": s.best_val, "times": dict(s.times), "config": self.cfg.to_dict(),
            "grad_errors": list(s.grad_errors), "precision": self.precision.name,
            **({} if self.scheduler is None else {"scheduler": self.scheduler.state_dict()}),
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        # before anything is restored or compared (a tensor where a number belongs made `!=` ambiguous)
        check_resumable(ckpt, self.out / CHECKPOINT, self.generator, int(self.labels.numel()))
        version = ckpt.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise TrainingError(f"cannot resume: {self.out / CHECKPOINT} has checkpoint format {version}, this "
                                f"version reads format {FORMAT_VERSION}; start a new out_dir")
        try:  # fields added since the checkpoint was written take their defaults
            saved = Config.from_dict(ckpt.get("config", {})).to_dict()
        except ConfigError as e:
            raise TrainingError(f"cannot resume: the config saved in {self.out / CHECKPOINT} is not valid ({e})") from e
        now = self.cfg.to_dict()
        diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
        if diff:
            raise TrainingError(f"cannot resume: the checkpoint in {self.out} was trained with different "
                                f"settings for {diff}; resume with the saved config ({self.out / 'config.yaml'}) "
                                "or start a new out_dir")
        was = ckpt.get("precision") or legacy_precision(saved.get("amp"), self.device)
        if was != self.precision.name:
            flag = "false" if was == "fp32" else "true"
            raise TrainingError(f"cannot resume: the checkpoint in {self.out} was trained in {was} and this run "
                                f"would compute in {self.precision.name}; resume with --set amp={flag}")
        check_state_dict(self.model, ckpt["model"], self.out / CHECKPOINT)
        check_optimizer_state(self.optimizer, ckpt["optimizer"], self.out / CHECKPOINT)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and isinstance(ckpt.get("scheduler"), dict):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], self.generator)
        self.loader.load_state_dict({"epoch": ckpt["epoch"], "coreset": ckpt.get("coreset")})
        self.state = RunState(ckpt["epoch"], float(ckpt.get("best_val", -1.0)), dict(ckpt.get("times", {})),
                              [float(e) for e in ckpt.get("grad_errors", [])])

    # ---------------------------------------------------------------- selection
    def selection_grads(self) -> Tensor:
        """(n, D) last-layer gradients of the selection objective at its adversarial points, for every
        training image in order, exactly as a selection round computes them."""
        ld = self.loader
        return selection_gradients(self.model, ld.objective, ld.source, ld.batch_size, features=ld.grad_features,
                                   layer=ld.layer, autocast=self._autocast)

    def select(self) -> tuple[Selection, dict[str, Any]]:
        """One selection round (attack pass, then the solver) without changing the run's coreset."""
        ld = self.loader
        return run_selection(ld.selector, self.model, ld.objective, ld.source, self.generator,
                             batch_size=ld.batch_size, features=ld.grad_features, layer=ld.layer,
                             autocast=self._autocast, num_classes=self.run_data.num_classes,
                             progress=self.progress)

    # -------------------------------------------------------------------- epochs
    def _context(self) -> EpochContext:
        env = self.env
        return EpochContext(self.model, self.objective, self.optimizer, self.cfg.optim, self.device,
                            self.state.epoch, self._autocast, str(self.out / CHECKPOINT), self.ddp,
                            (lambda t: sum_counts(t, env)) if env.is_distributed else None, self.base_lrs,
                            self.scheduler)

    def train_epoch(self, indices: Tensor, weights: Tensor, bar: Any = None) -> dict[str, float]:
        """One pass over ``indices`` (k,) with ``weights`` (k,) under the run's weight rule (``optim.weight_norm``;
        auto: the selector's). Uniform weights give the plain mean loss under every rule."""
        n_batches = -(-indices.numel() // self.cfg.optim.batch_size)
        return train_epoch(self._context(), self.loader.batches_for(indices, weights), n_batches,
                           self.loader.loss_norm, bar, getattr(self.loader, "counted", None))

    def evaluate(self, final: bool = False, model: nn.Module | None = None) -> dict[str, Any]:
        """Clean and PGD accuracy on the test subset (and validation robust accuracy if a split exists).
        ``final``: PGD with eval.pgd_steps and restarts, AutoAttack if asked, the objective's own threats."""
        rd = self.run_data
        if self.env.is_distributed:
            from advcoreset.training.ddp import evaluate_sharded
            return evaluate_sharded(model or self.model, self.objective, self.cfg, rd.test, rd.val, self.env, final)
        return evaluate_model(model or self.model, self.objective, self.cfg, rd.test, rd.val, self.device, final,
                              progress=self.progress)

    # ----------------------------------------------------------------------- run
    def _open(self, resume: bool) -> MetricsLog | None:
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.out / CHECKPOINT
        if resume:
            if not ckpt_path.exists():
                raise TrainingError(f"--resume: no checkpoint {ckpt_path} to resume from")
            finished_results(self.out, self.cfg.optim.epochs)  # a finished run of another length: refused
            self._restore(load_checkpoint(ckpt_path, self.device))
        elif ckpt_path.exists():
            raise TrainingError(f"{self.out} already holds a run ({ckpt_path}); pass --resume to continue it "
                                "or choose another out_dir (nothing was overwritten)")
        if not self.env.is_main:  # rank 0 alone writes
            return None
        self.cfg.save(self.out / "config.yaml")
        log = MetricsLog(self.out, self.cfg.tensorboard)
        log.truncate_after(self.state.epoch)
        return log

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(record)

    def _train_one(self, record: dict[str, Any]) -> None:
        ld, cfg = self.loader, self.cfg
        seed_rank(cfg.seed, self.env, self.state.epoch)
        srec = ld.start_epoch()
        if srec is not None:
            self._write({"kind": "selection", **srec})
            self._add_times({"selection_attack": srec["time_selection_attack"],
                             "selection_solver": srec["time_selection_solver"]})
            record.update({k: srec[k] for k in ("time_selection_attack", "time_selection_solver", "grad_error")})
            if "time_error_pass" in srec:  # measured, not trained: outside train_seconds() and the cost
                self._add_times({"error_pass": srec["time_error_pass"]})
                record["time_error_pass"] = srec["time_error_pass"]
            if srec["grad_error"] is not None:
                self.state.grad_errors.append(float(srec["grad_error"]))
        record["phase"] = ld.phase
        # a bar on a terminal, else a line at most once per progress interval: an epoch is a long step like any other
        with self.progress(f"epoch {self.state.epoch + 1}/{cfg.optim.epochs} [{record['phase']}]", len(ld)) as task:
            stats = train_epoch(self._context(), ld.epoch_batches(), len(ld), ld.loss_norm, task,
                                getattr(ld, "counted", None))
        record.update(stats)
        self._add_times({k[5:]: v for k, v in stats.items() if k.startswith("time_")})
        self.state.epoch += 1
        ld.end_epoch()

    def _evaluate_epoch(self, record: dict[str, Any]) -> None:
        cfg = self.cfg
        t = time.perf_counter()
        record.update(self.evaluate())
        record["time_eval"] = time.perf_counter() - t
        self._add_times({"eval": record["time_eval"]})
        vkey = f"val_pgd{cfg.eval.val_pgd_steps}_acc"
        if vkey in record and record[vkey] > self.state.best_val:
            self.state.best_val = record[vkey]
            if self.env.is_main:
                save_atomic({"model": self.model.state_dict(), "epoch": self.state.epoch, "config": cfg.to_dict(),
                             "val_robust_acc": record[vkey]}, self.out / BEST)

    def _epoch(self, mode: str) -> None:
        cfg = self.cfg
        record: dict[str, Any] = {"kind": "epoch", "epoch": self.state.epoch + 1, "world_size": self.env.world_size}
        self._train_one(record)
        last = self.state.epoch == cfg.optim.epochs
        if cfg.eval.every and (self.state.epoch % cfg.eval.every == 0) and not last:
            self._evaluate_epoch(record)
        record["time_train_total"] = self.train_seconds()
        # log first: a kill between the two leaves a line past the checkpoint, which resume drops
        self._write(record)
        if self.env.is_main:
            save_atomic(self._checkpoint(), self.out / CHECKPOINT)
        if mode in ("line", "bar") and self.env.is_main:
            print(epoch_line(record, cfg.optim.epochs), flush=True)

    def _final(self, mode: str) -> dict[str, Any]:
        t = time.perf_counter()
        with final_evaluation(self.out, self.state.epoch):  # on failure: says --resume reruns only this
            final = self.evaluate(final=True)
        final_time = time.perf_counter() - t
        results: dict[str, Any] = {"kind": "final", "epoch": self.state.epoch, **final,
                                   "time_train_total": self.train_seconds(), "time_final_eval": final_time,
                                   "time_selection": self.selection_seconds(), **self._grad_error_summary(),
                                   "time_error_pass": self.state.times.get("error_pass", 0.0),
                                   **self._selection_summary(),
                                   "times": dict(self.state.times), "device": str(self.device),
                                   "precision": precision_record(self.precision),
                                   "world_size": self.env.world_size}
        self._write(results)
        if self.env.is_main:
            write_json_atomic(self.out / "results.json", results)
            # model.safetensors + model.json (+ model_arch.py): the model, loadable without advcoreset
            export_run_model(self.out, self.model, self.cfg, self.run_data.shape, self.run_data.classes, results,
                             num_classes=self.run_data.num_classes)
        if mode in ("line", "bar") and self.env.is_main:
            print(final_line(results), flush=True)
        return results

    def run(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``optim.epochs`` (or stop after ``stop_after`` completed epochs, for tests), then
        evaluate; returns (and writes to results.json) the final metrics."""
        self._log = self._open(resume)
        mode = progress_mode(self.cfg.progress) if self.env.is_main else "none"
        try:
            while self.state.epoch < self.cfg.optim.epochs:
                if stop_after is not None and self.state.epoch >= stop_after:
                    return {"stopped_after": self.state.epoch}
                self._epoch(mode)
            return self._final(mode)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {self.out / CHECKPOINT} holds epoch {self.state.epoch}; continue with --resume",
                  flush=True)
            raise
        finally:
            if self._log is not None:
                self._log.close()

    def selection_seconds(self) -> float:
        """Seconds spent choosing coresets so far (selection attack pass + solver), part of the training time."""
        return sum(self.state.times.get(k, 0.0) for k in ("selection_attack", "selection_solver"))

    def _selection_summary(self) -> dict[str, Any]:
        """How many selection rounds ran, and a note when a coreset method never got to choose (a warm start
        as long as the run): the run is then labelled by what it did."""
        ld = self.loader
        if not ld.selector.subset:
            return {"selection_rounds": 0}
        rounds = ld.round_index(self.state.epoch)
        out: dict[str, Any] = {"selection_rounds": rounds}
        if rounds == 0:
            out["note"] = (f"no selection round ran (selection.warm_epochs {self.cfg.selection.warm_epochs} >= "
                           f"optim.epochs {self.cfg.optim.epochs}): every epoch trained on all data, as "
                           "selection.method=full does")
        return out

    def _grad_error_summary(self) -> dict[str, Any]:
        errs = self.state.grad_errors
        return {"selection_rounds_with_error": len(errs),
                "grad_error_mean": sum(errs) / len(errs) if errs else None}

    def train_seconds(self) -> float:
        """Training wall-clock so far: attack + update + data + selection (warm start included); no evaluation
        and no ``grad_error`` measuring pass of a gradient-free selector (``times["error_pass"]``)."""
        t = self.state.times
        return sum(t.get(k, 0.0) for k in ("epoch_wall", "selection_attack", "selection_solver"))


def train(cfg: Config, *, resume: bool = False, stop_after: int | None = None, data: DataSplits | None = None,
          model: nn.Module | None = None, train_set: Any = None, test_set: Any = None,
          optimizer: torch.optim.Optimizer | None = None, selection_set: Any = None,
          scheduler: Any = None, keys: Any = None, model_factory: str | None = None) -> dict[str, Any]:
    """Train (and finally evaluate) the run described by ``cfg``, with any parts the caller brings; see
    ``Trainer`` and ``Trainer.run``."""
    trainer = Trainer(cfg, data, model=model, train_set=train_set, test_set=test_set, optimizer=optimizer,
                      selection_set=selection_set, scheduler=scheduler, keys=keys, model_factory=model_factory)
    try:
        results = trainer.run(resume=resume, stop_after=stop_after)
    except BaseException:
        shutdown(trainer.env)  # no barrier: a peer may be gone
        raise
    shutdown(trainer.env, synchronize=True)
    return results
