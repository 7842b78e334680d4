"""The training loop: full-data warm start, periodic adversarial coreset selection, weighted training.

It knows no attack, objective or selector by name: the config names them and the registries build them.
Every epoch appends to ``metrics.jsonl`` and rewrites ``last.pt`` atomically; ``resume=True`` continues
from ``last.pt`` and reaches bit-identical weights on CPU.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config, ConfigError
from advcoreset.data import DataSplits, default_augment, iterate_batches, prepare_data, to_float
from advcoreset.data.datasets import dataset_stats
from advcoreset.models import create_model
from advcoreset.models.export import export_run_model
from advcoreset.objectives import Objective, build_objective, build_selection_objective
from advcoreset.progress import make_progress
from advcoreset.selection import Selection, approximation_error, build_selector, last_layer_grads

# issue 11: check_state_dict, check_against_data, final_evaluation, write_json_atomic
from advcoreset.training.checkpoint import check_state_dict, load_checkpoint, rng_state, save_atomic, set_rng_state
from advcoreset.training.logging import MetricsLog, progress_mode
from advcoreset.training.preflight import check_against_data
from advcoreset.training.run_folder import final_evaluation, write_json_atomic
from advcoreset.training.schedule import is_selection_epoch, is_warm, lr_at

CHECKPOINT = "last.pt"
BEST = "best.pt"
# Fields that may change between a killed run and its resumption without changing what is trained.
_RESUME_FREE = {"out_dir", "progress", "tensorboard", "threads", "eval", "device"}


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible resume); the message says what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use device=cpu or auto")
    return dev


def eval_alpha(cfg: Config) -> float:
    """Evaluation PGD step: eval.pgd_alpha, else eps/10 (l_inf) or eps/4 (l_2)."""
    a = cfg.objective.attack
    if cfg.eval.pgd_alpha is not None:
        return cfg.eval.pgd_alpha
    return a.eps / 10 if a.norm == "linf" else a.eps / 4


class _StepTimer:
    """Accumulates the time of named sections without a device sync per step (CUDA events are read once
    per epoch)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: dict[str, list[tuple[Any, Any]]] = {}
        self.seconds: dict[str, float] = {}

    def section(self, name: str) -> _Section:
        return _Section(self, name)

    def totals(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            for name, pairs in self.events.items():
                self.seconds[name] = self.seconds.get(name, 0.0) + sum(a.elapsed_time(b) for a, b in pairs) / 1e3
            self.events.clear()
        return dict(self.seconds)


class _Section:
    def __init__(self, timer: _StepTimer, name: str) -> None:
        self.t, self.name = timer, name

    def __enter__(self) -> None:
        if self.t.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.t.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.t.events.setdefault(self.name, []).append((self.start, end))
        else:
            self.t.seconds[self.name] = self.t.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0


@dataclass
class RunState:
    epoch: int = 0
    """Epochs completed."""
    coreset: Selection | None = None
    best_val: float = -1.0
    times: dict[str, float] = field(default_factory=dict)
    """Cumulative seconds: attack, update, data, selection_attack, selection_solver, eval."""


class Trainer:
    """Composes data, model, objective, selector and schedule from one ``Config``."""

    def __init__(self, cfg: Config, data: DataSplits | None = None) -> None:
        self.cfg = cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        self.data = data or prepare_data(cfg.data, cfg.seed)
        check_against_data(cfg, self.data.train.labels, self.data.train.shape,  # issue 11: before training
                           self.data.train.num_classes)
        tr = self.data.train
        c, h, w = tr.shape
        if h != w:
            raise ConfigError(f"data: images must be square, got {h}x{w}")
        mean, std = dataset_stats(cfg.data.name, tr.images if cfg.data.name == "imagefolder" else None)
        self.model: nn.Module = create_model(cfg.model.name, c, tr.num_classes, h, mean, std,
                                             **({} if cfg.model.width is None else {"width": cfg.model.width})
                                             ).to(self.device)
        self.cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if (self.cuda and cfg.channels_last) else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.objective: Objective = build_objective(cfg.objective)
        self.sel_objective: Objective = build_selection_objective(cfg.objective, cfg.selection)
        self.selector = build_selector(cfg.selection, cfg.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        aug = cfg.data.augment if cfg.data.augment != "auto" else default_augment(cfg.data.name)
        self.padding = cfg.data.crop_padding if aug in ("crop", "crop_flip") else 0
        self.flip = aug == "crop_flip"
        # the training set lives on the device as uint8
        self.images = tr.images.to(self.device)
        self.labels = tr.labels.to(self.device)
        self.state = RunState()
        # io (issue 12): progress of selection and final evaluation; tests swap in make_progress("line", interval=0)
        self.progress = make_progress(cfg.progress)

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> Any:
        if self.cuda and self.cfg.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "format_version": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": s.epoch,
            "rng": rng_state(self.generator),
            "coreset": None if s.coreset is None else {"indices": s.coreset.indices.cpu(),
                                                        "weights": s.coreset.weights.cpu()},
            "best_val": s.best_val,
            "times": dict(s.times),
            "config": self.cfg.to_dict(),
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        saved = ckpt.get("config", {})
        now = self.cfg.to_dict()
        diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
        if diff:
            raise TrainingError(f"cannot resume: the checkpoint in {self.out} was trained with different "
                                f"settings for {diff}; resume with the saved config ({self.out / 'config.yaml'}) "
                                "or start a new out_dir")
        check_state_dict(self.model, ckpt["model"], self.out / CHECKPOINT)  # issue 11: a named error
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], self.generator)
        cs = ckpt.get("coreset")
        coreset = None
        if cs is not None:
            coreset = Selection(cs["indices"].to(self.device), cs["weights"].to(self.device))
        self.state = RunState(ckpt["epoch"], coreset, float(ckpt.get("best_val", -1.0)),
                              dict(ckpt.get("times", {})))

    def _add_times(self, times: dict[str, float]) -> None:
        for k, v in times.items():
            self.state.times[k] = self.state.times.get(k, 0.0) + v

    # ---------------------------------------------------------------- selection
    def selection_grads(self) -> Tensor:
        """(n, D) last-layer gradients of the selection objective at its adversarial points, for every
        training image, on the very pixels the attack ran on (no augmentation). Batches are the training
        batch, so per image the pass costs what the training attack costs (larger batches were slower per
        image on a CPU); ``benchmarks/selection_overhead.py`` times it against a training epoch."""
        n = self.labels.numel()
        bs = self.cfg.optim.batch_size
        grads: Tensor | None = None
        task = self.progress("selection: attack pass + last-layer gradients", n)  # io (issue 12)
        for start in range(0, n, bs):
            x = to_float(self.images[start:start + bs]).contiguous(memory_format=self.memory_format)
            with self._autocast():
                g = last_layer_grads(self.model, self.sel_objective, x, self.labels[start:start + bs],
                                     self.cfg.selection.grad_features)
            if grads is None:
                # One (n, D) buffer: keeping every chunk alive until a final cat interleaved live blocks
                # with the attack's temporaries in the CPU heap, and the pass slowed down as it went.
                grads = torch.empty((n, g.shape[1]), dtype=g.dtype, device=g.device)
            grads[start:start + g.shape[0]] = g
            task.update(g.shape[0])  # io (issue 12)
        task.close()  # io (issue 12)
        if grads is None:
            raise ValueError("selection needs at least one training image, the training set is empty")
        if self.cuda:
            torch.cuda.synchronize()
        return grads

    def select(self) -> tuple[Selection, dict[str, Any]]:
        """Choose a weighted coreset: the attack pass of ``selection_grads``, then the solver."""
        cfg = self.cfg.selection
        n = self.labels.numel()
        t0 = time.perf_counter()
        grads = self.selection_grads() if self.selector.needs_grads else None
        t1 = time.perf_counter()
        with self.progress(f"selection: {cfg.method} solver", None) as task:  # io (issue 12)
            sel = self.selector.select(grads, self.labels, self.generator)
            task.update(1, note=f"{int(sel.indices.numel())} of {n} chosen")
        if self.cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        hist = torch.bincount(self.labels[sel.indices], minlength=self.data.train.num_classes)
        record: dict[str, Any] = {
            "kind": "selection", "epoch": self.state.epoch + 1, "method": cfg.method,
            "batchwise": cfg.batchwise, "coreset_size": int(sel.indices.numel()), "train_size": n,
            "class_histogram": hist.tolist(), "weight_sum": float(sel.weights.sum()),
            "time_selection_attack": t1 - t0, "time_selection_solver": t2 - t1,
            "grad_error": approximation_error(grads, sel.indices, sel.weights) if grads is not None else None,
            "solver_stats": sel.stats,
        }
        self._add_times({"selection_attack": t1 - t0, "selection_solver": t2 - t1})
        return sel, record

    # --------------------------------------------------------------------- epoch
    def train_epoch(self, indices: Tensor, weights: Tensor, bar: Any = None) -> dict[str, float]:
        """One pass over ``indices`` with per-example ``weights``, applied as ``optim.weight_norm`` says
        (default auto: resampled for CRAIG, per mini-batch otherwise; uniform weights give the plain mean
        loss under every rule)."""
        cfg = self.cfg
        model, opt = self.model, self.optimizer
        model.train()
        timer = _StepTimer(self.device)
        rule = cfg.optim.weight_norm
        if rule == "auto":
            rule = "resample" if cfg.selection.method == "craig" else "batch"
        if rule == "resample" and indices.numel() and not bool((weights == weights[0]).all()):
            # As many draws as the coreset holds, with replacement, in proportion to the weights; then unit
            # weights: the epoch's expected loss is the weighted one, and no step is dominated by a few heavy
            # points (a CRAIG medoid can stand for a large share of its class).
            draw = torch.multinomial(weights.float().cpu(), indices.numel(), replacement=True,
                                     generator=self.generator).to(indices.device)
            indices, weights = indices[draw], torch.ones_like(weights)
        # None: each batch's own weight sum (weighted_mean's default); else B * the epoch's mean weight.
        wbar = weights.float().mean() if rule == "epoch" else None
        n_batches = math.ceil(indices.numel() / cfg.optim.batch_size)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        t_start = time.perf_counter()
        batches = iterate_batches(self.images, self.labels, indices, weights, cfg.optim.batch_size,
                                  self.generator, padding=self.padding, flip=self.flip,
                                  memory_format=self.memory_format)
        for i in range(n_batches):
            with timer.section("data"):
                b = next(batches)
            lr = lr_at((self.state.epoch + i / n_batches) / cfg.optim.epochs, cfg.optim)
            for g in opt.param_groups:
                g["lr"] = lr
            with timer.section("attack"), self._autocast():
                x_adv = self.objective.attack(model, b.x, b.y)
            with timer.section("update"):
                norm = None if wbar is None else b.y.numel() * wbar
                with self._autocast():
                    out = self.objective.loss_at(model, b.x, x_adv, b.y, b.w, norm=norm)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if cfg.optim.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                opt.step()
            loss_sum += out.per_example.float().sum()
            correct += (out.logits.argmax(1) == b.y).sum()
            seen += b.y.numel()
            if (i + 1) % 50 == 0 or i + 1 == n_batches:  # the only host syncs of the loop
                avg = float(loss_sum) / seen
                if not math.isfinite(avg):
                    raise TrainingError(
                        f"the training loss became {avg} in epoch {self.state.epoch + 1} (batch {i + 1}); "
                        f"the last good checkpoint {self.out / CHECKPOINT} (epoch {self.state.epoch}) is "
                        "untouched. Lower optim.lr, or check the data for NaN/inf pixels.")
                if bar is not None:
                    bar.set_postfix(loss=f"{avg:.3f}", acc=f"{float(correct) / seen:.3f}", lr=f"{lr:.3g}")
            if bar is not None:
                bar.update(1)
        times = timer.totals()
        times["epoch_wall"] = time.perf_counter() - t_start
        return {"train_loss": float(loss_sum) / max(seen, 1), "train_adv_acc": float(correct) / max(seen, 1),
                "n_train": seen, "lr": lr, **{f"time_{k}": v for k, v in times.items()}}

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, final: bool = False, model: nn.Module | None = None) -> dict[str, Any]:
        """Clean and PGD accuracy on the test subset (and validation robust accuracy if a split exists).
        ``final``: PGD with eval.pgd_steps and restarts, plus AutoAttack if asked."""
        from advcoreset.evaluation import evaluate, pgd_accuracy
        from advcoreset.evaluation.autoattack import AutoAttackBudgets

        model = model or self.model
        e, a = self.cfg.eval, self.cfg.objective.attack
        res: dict[str, Any] = {}
        steps = e.pgd_steps if final else e.val_pgd_steps
        test = evaluate(model, self.data.test.images, self.data.test.labels, norm=a.norm, eps=a.eps,
                        pgd_steps=steps, pgd_alpha=eval_alpha(self.cfg),
                        pgd_restarts=e.pgd_restarts if final else 1,
                        autoattack=final and e.autoattack, aa_n=e.autoattack_n,
                        aa_version=e.autoattack_version, batch_size=e.batch_size,
                        aa_budgets=None if e.autoattack_targets == 9 else AutoAttackBudgets(
                            target_classes=e.autoattack_targets),
                        device=self.device, progress=self.progress if final else None)  # io (issue 12)
        res.update({f"test_{k}": v for k, v in test.items()})
        if final and self.cfg.objective.name == "pat":  # PAT's own threat model, beside l_p
            from advcoreset.attacks.perceptual import perceptual_accuracy
            from advcoreset.evaluation.run import perceptual_distance

            p = self.cfg.objective.pat
            # the objective's LPIPS is already loaded (an AlexNet file is read once per run)
            lpips, lpips_name = perceptual_distance(self.cfg, loaded=getattr(self.objective, "lpips", None))
            for attack in ("ppgd", "lpa"):
                res[f"test_{attack}_acc"] = perceptual_accuracy(
                    model, self.data.test.images, self.data.test.labels, attack=attack, bound=p.bound,
                    steps=max(p.steps, 10), lpips=lpips, batch_size=e.batch_size)
            res["test_perceptual_bound"] = p.bound
            res["test_perceptual_lpips"] = lpips_name
        if self.data.val is not None and not final:
            res[f"val_pgd{e.val_pgd_steps}_acc"] = pgd_accuracy(
                model, self.data.val.images, self.data.val.labels, eps=a.eps, alpha=eval_alpha(self.cfg),
                steps=e.val_pgd_steps, norm=a.norm, batch_size=e.batch_size, device=self.device)
        return res

    # ----------------------------------------------------------------------- run
    def run(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``optim.epochs`` (or stop after ``stop_after`` completed epochs, for tests), then
        evaluate; returns (and writes to results.json) the final metrics."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.out / CHECKPOINT
        if resume:
            if not ckpt_path.exists():
                raise TrainingError(f"--resume: no checkpoint {ckpt_path} to resume from")
            self._restore(load_checkpoint(ckpt_path, self.device))
        elif ckpt_path.exists():
            raise TrainingError(f"{self.out} already holds a run ({ckpt_path}); pass --resume to continue it "
                                "or choose another out_dir (nothing was overwritten)")
        cfg.save(self.out / "config.yaml")
        log = MetricsLog(self.out, cfg.tensorboard)
        log.truncate_after(self.state.epoch)
        mode = progress_mode(cfg.progress)
        n_all = self.labels.numel()
        all_idx = torch.arange(n_all, device=self.device)
        ones = torch.ones(n_all, device=self.device)
        try:
            while self.state.epoch < cfg.optim.epochs:
                if stop_after is not None and self.state.epoch >= stop_after:
                    return {"stopped_after": self.state.epoch}
                ep = self.state.epoch
                record: dict[str, Any] = {"kind": "epoch", "epoch": ep + 1}
                if is_selection_epoch(ep, cfg.selection):
                    self.model.eval()
                    sel, srec = self.select()
                    self.state.coreset = sel
                    log.write(srec)
                    record.update({k: srec[k] for k in ("time_selection_attack", "time_selection_solver",
                                                        "grad_error")})
                warm = is_warm(ep, cfg.selection) or self.state.coreset is None
                idx, w = (all_idx, ones) if warm else (self.state.coreset.indices, self.state.coreset.weights)
                record["phase"] = "full" if cfg.selection.method == "full" else ("warm" if warm else "coreset")
                bar = None
                if mode == "bar":
                    from tqdm import tqdm
                    bar = tqdm(total=math.ceil(idx.numel() / cfg.optim.batch_size),
                               desc=f"epoch {ep + 1}/{cfg.optim.epochs} [{record['phase']}]", leave=False)
                try:
                    stats = self.train_epoch(idx, w, bar)
                finally:
                    if bar is not None:
                        bar.close()
                record.update(stats)
                self._add_times({k[5:]: v for k, v in stats.items() if k.startswith("time_")})
                self.state.epoch += 1
                last = self.state.epoch == cfg.optim.epochs
                if cfg.eval.every and (self.state.epoch % cfg.eval.every == 0) and not last:
                    t = time.perf_counter()
                    record.update(self.evaluate())
                    record["time_eval"] = time.perf_counter() - t
                    self._add_times({"eval": record["time_eval"]})
                    vkey = f"val_pgd{cfg.eval.val_pgd_steps}_acc"
                    if vkey in record and record[vkey] > self.state.best_val:
                        self.state.best_val = record[vkey]
                        save_atomic({"model": self.model.state_dict(), "epoch": self.state.epoch,
                                     "config": cfg.to_dict(), "val_robust_acc": record[vkey]}, self.out / BEST)
                record["time_train_total"] = self.train_seconds()
                # log first: a kill between the two leaves a line past the checkpoint, which resume drops
                log.write(record)
                save_atomic(self._checkpoint(), ckpt_path)
                if mode in ("line", "bar"):
                    print(_epoch_line(record, cfg.optim.epochs), flush=True)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {ckpt_path} holds epoch {self.state.epoch}; continue with --resume", flush=True)
            raise
        t = time.perf_counter()
        with final_evaluation(self.out, self.state.epoch):  # issue 11: says --resume reruns only this
            final = self.evaluate(final=True)
        final_time = time.perf_counter() - t
        results: dict[str, Any] = {"kind": "final", "epoch": self.state.epoch, **final,
                                   "time_train_total": self.train_seconds(), "time_final_eval": final_time,
                                   "times": dict(self.state.times), "device": str(self.device)}
        log.write(results)
        log.close()
        write_json_atomic(self.out / "results.json", results)  # issue 11: atomic
        # io (issue 12): model.safetensors + model.json (+ model_arch.py) beside the run, loadable without advcoreset
        export_run_model(self.out, self.model, cfg, self.data.train.shape, self.data.train.classes, results)
        if mode in ("line", "bar"):
            print(_final_line(results), flush=True)
        return results

    def train_seconds(self) -> float:
        """Training wall-clock so far: attack + update + data + selection (warm start included), no eval."""
        t = self.state.times
        return sum(t.get(k, 0.0) for k in ("epoch_wall", "selection_attack", "selection_solver"))


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs} [{r['phase']}]", f"n={r['n_train']}", f"loss {r['train_loss']:.4f}",
             f"adv-acc {r['train_adv_acc']:.3f}", f"lr {r['lr']:.3g}", f"{r['time_epoch_wall']:.1f}s"]
    if r.get("time_selection_attack") is not None:
        parts.append(f"select {r['time_selection_attack'] + r['time_selection_solver']:.1f}s")
    if r.get("grad_error") is not None:
        parts.append(f"grad-err {r['grad_error']:.3f}")
    parts += [f"{k} {v:.4f}" for k, v in r.items() if k.endswith("_acc") and k.startswith(("test_", "val_"))]
    return " | ".join(parts)


def _final_line(r: dict[str, Any]) -> str:
    accs = ", ".join(f"{k[5:]} {v:.4f}" for k, v in r.items() if k.startswith("test_") and k.endswith("_acc"))
    return f"final: {accs} | train time {r['time_train_total']:.1f}s (eval {r['time_final_eval']:.1f}s)"


def train(cfg: Config, *, resume: bool = False, stop_after: int | None = None,
          data: DataSplits | None = None) -> dict[str, Any]:
    """Train (and finally evaluate) the run described by ``cfg``; see ``Trainer.run``."""
    return Trainer(cfg, data).run(resume=resume, stop_after=stop_after)
