"""A run folder's life: checked writable before any work, one writer at a time, ``RunFolder`` (the files of a
run: checkpoint format, resume rules, atomic writes, metrics log, time accounting), results written
atomically, a finished run recognised, and a failed final evaluation left resumable.

The folder holds ``config.yaml``, ``metrics.jsonl``, ``last.pt`` (and ``best.pt``), ``results.json``, the exported
model and the lock file ``.lock``. The lock is an advisory ``flock`` on that file: the kernel releases it when the
holder dies (even by SIGKILL), so a killed run never leaves a stale lock behind, while a second live
writer (a rerun started before an orphaned one ended) is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from advcoreset.checkpoint import (
    check_optimizer_state,
    check_resumable,
    check_state_dict,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from advcoreset.config import Config, ConfigError
from advcoreset.export import export_run_model
from advcoreset.fileperm import default_file_mode
from advcoreset.precision import legacy_precision, precision_record
from advcoreset.training.epoch import TrainingError
from advcoreset.training.logging import MetricsLog, progress_mode
from advcoreset.training.parts import Parts
from advcoreset.training.report import epoch_line, final_line

LOCK = ".lock"
RESULTS = "results.json"
CHECKPOINT = "last.pt"
PARENT_ENV = "ADVCORESET_PARENT_PID"
"""Set by ``advcoreset bench`` for its training children: the pid they must not outlive."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (not writable, in use, no run to resume, a run already there)."""


def check_writable(folder: str | Path, what: str = "run folder", hint: str = "choose a folder you can write to",
                   ) -> Path:
    """Create ``folder`` (and parents) if needed and prove a file can be written in it.

    Raises:
        RunFolderError: naming the folder, when it cannot be created or written (read-only, a file in the
            way, no permission).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{what} {folder} is a file, not a folder; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunFolderError(f"{what} {folder} is not writable ({e.strerror or e}); {hint}") from None
    return folder


RUN_FILES = ("config.yaml", "last.pt", "best.pt", "results.json", "metrics.jsonl", "model.safetensors",
             "model.json", "model_arch.py", "probe.json")
"""Files a training run owns: an evaluation never writes over them."""


def check_output_file(path: str | Path, what: str = "output file",
                      hint: str = "write the result elsewhere with --output FILE", *,
                      run: str | Path | None = None, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Prove that ``path`` can be written (its folder writable, the path not a folder), before any work.
    Nothing is left behind: the folder is only created if it had to be, and the probe file is removed.
    ``run``: the run folder the command reads, none of whose own files (``RUN_FILES``) may be the output;
    ``inputs``: files the command reads, which may not be the output either."""
    path = Path(path)
    target = path.resolve()
    for inp in inputs:
        if Path(inp).resolve() == target:
            raise RunFolderError(f"{what} {path} is also an input of this command ({inp}): writing it would "
                                 f"destroy it; {hint}")
    if run is not None and target.parent == Path(run).resolve() and target.name in RUN_FILES:
        raise RunFolderError(f"{what} {path} is the run's own {target.name}: writing it would destroy it; {hint} "
                             f"(e.g. {Path(run) / 'eval.json'})")
    if path.is_dir():
        raise RunFolderError(f"{what} {path} is a folder; give a file name (e.g. {path / 'eval.json'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunFolderError(f"{what} {path} exists and is not writable; {hint}")
    check_writable(path.parent, f"folder of the {what}", hint)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename: a crash mid-write leaves the old
    file (or none), never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively for the duration; a second holder gets ``RunFolderError`` at once.

    The lock file keeps the holder's pid (for the message); the lock itself lives in the kernel and ends
    with the process, so the file left behind by a killed run is not a stale lock."""
    folder = check_writable(folder)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no second-writer protection there
        yield
        return
    path = folder / LOCK
    f = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFolderError(f"run folder {folder} is in use by {holder}; wait for it to end (or stop it) "
                                 "before writing to this folder again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()


def lock_holder(folder: str | Path) -> int | None:
    """The pid holding ``folder``'s lock, or None when no live process holds it."""
    path = Path(folder) / LOCK
    if not path.exists():
        return None
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().split()
            return int(text[1]) if len(text) == 2 and text[1].isdigit() else -1
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def finished_results(folder: str | Path, epochs: int | None = None) -> dict[str, Any] | None:
    """The final results of a finished run in ``folder`` (its results.json beside its checkpoint), or None
    when the run is not finished (no results.json, or one that does not parse).

    ``epochs``: the length the caller's config asks for (``optim.epochs``), when it would resume the run. A
    finished run trained to another length raises ``RunFolderError``: resuming it trains nothing, and its
    results would stand for a run that was not trained."""
    folder = Path(folder)
    path = folder / RESULTS
    if not (path.is_file() and (folder / CHECKPOINT).is_file()):
        return None
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(res, dict) and res.get("kind") == "final"):
        return None
    done = res.get("epoch")
    if epochs is not None and isinstance(done, int) and not isinstance(done, bool) and done != epochs:
        raise RunFolderError(f"--resume: {folder} holds a finished run ({path}) of {done} epoch(s) and the config "
                             f"now asks for optim.epochs={epochs}; a finished run is not trained further: start a "
                             f"new --out for {epochs} epochs (nothing was changed)")
    return res


def check_start(folder: str | Path, resume: bool) -> None:
    """Before any work: refuse to start a new run over an existing one, or to resume where there is none."""
    folder = Path(folder)
    ckpt = folder / CHECKPOINT
    if resume and not ckpt.exists():
        raise RunFolderError(f"--resume: there is no checkpoint {ckpt} to resume from; drop --resume to start "
                             "a new run there")
    if not resume and ckpt.exists():
        raise RunFolderError(f"{folder} already holds a run ({ckpt}); pass --resume to continue it or choose "
                             "another out_dir (nothing was overwritten)")


@contextmanager
def final_evaluation(folder: str | Path, epoch: int) -> Iterator[None]:
    """Wrap the final evaluation: whatever fails inside it is told that the trained model is safe and that
    ``--resume`` reruns only the evaluation (a note on the exception, so a bug's traceback keeps it too)."""
    try:
        yield
    except Exception as e:
        note = (f"final evaluation failed after training: the trained model is safe in {Path(folder) / CHECKPOINT} "
                f"(epoch {epoch}); `advcoreset train --out {folder} --resume` reruns only the final evaluation")
        if hasattr(e, "add_note"):
            e.add_note(note)
        else:  # Python 3.10: what add_note does
            e.__notes__ = [*getattr(e, "__notes__", []), note]  # type: ignore[attr-defined]
        raise


def die_with_parent() -> None:
    """In a bench child (``ADVCORESET_PARENT_PID`` set): end this process when that parent ends, so a killed
    bench leaves no training run behind that keeps writing into its folder.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Elsewhere a daemon thread
    polls the parent pid once a second."""
    want = os.environ.get(PARENT_ENV)
    if not want or not want.isdigit():
        return
    parent = int(want)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        return

    def _watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=_watch, daemon=True, name="advcoreset-parent-watch").start()


# ------------------------------------------------------------------------------------------- a run's files
BEST = "best.pt"
FORMAT_VERSION = 1
"""Checkpoint layout: model, optimizer, epoch, rng {torch, data[, cuda]}, coreset {indices, weights} or None,
best_val, times, config, grad_errors, precision[, scheduler][, perturbations {known, delta}: the
loader's perturbation cache, ``selection.points: cached``]."""
RESUME_FREE = frozenset({"out_dir", "progress", "tensorboard", "threads", "eval", "device", "amp"})
"""Fields that may change between a killed run and its resumption without changing what is trained (``amp`` is
checked as the precision it resolves to: ``auto`` and ``true`` can mean the same)."""


@dataclass
class RunState:
    """Where a run stands: what a checkpoint keeps beside the parts' own states."""

    epoch: int = 0
    """Epochs completed."""
    best_val: float = -1.0
    times: dict[str, float] = field(default_factory=dict)
    """Cumulative seconds: attack, update, data, selection_attack, selection_solver, eval, error_pass (the
    ``grad_error`` pass of a gradient-free selector: measured, not part of training)."""
    grad_errors: list[float] = field(default_factory=list)
    """The coreset's relative gradient error of every selection round so far (rounds without gradients,
    e.g. random, add none)."""

    def add_times(self, times: Mapping[str, float]) -> None:
        for k, v in times.items():
            self.times[k] = self.times.get(k, 0.0) + v

    def train_seconds(self) -> float:
        """Training wall-clock so far: attack + update + data + selection (warm start included); no evaluation
        and no ``grad_error`` measuring pass of a gradient-free selector (``times["error_pass"]``)."""
        return sum(self.times.get(k, 0.0) for k in ("epoch_wall", "selection_attack", "selection_solver"))

    def selection_seconds(self) -> float:
        """Seconds spent choosing coresets so far (selection attack pass + solver), part of the training time."""
        return sum(self.times.get(k, 0.0) for k in ("selection_attack", "selection_solver"))

    def summary(self) -> dict[str, Any]:
        """The final record's time and gradient-error fields."""
        errs = self.grad_errors
        return {"time_train_total": self.train_seconds(), "time_selection": self.selection_seconds(),
                "selection_rounds_with_error": len(errs), "grad_error_mean": sum(errs) / len(errs) if errs else None,
                "time_error_pass": self.times.get("error_pass", 0.0)}


class RunFolder:
    """A run's folder and its rules: ``config.yaml``; ``metrics.jsonl`` (and TensorBoard) with one record per
    selection and epoch; ``last.pt`` in checkpoint format ``FORMAT_VERSION``, written atomically after every
    epoch (``save_atomic``); ``best.pt`` at the best validation score; ``results.json`` and the exported model at
    the end; what ``--resume`` accepts (``restore``); and the time accounting (``state``). Only the main rank
    writes (``main``); every rank reads the checkpoint it resumes from."""

    def __init__(self, cfg: Config, main: bool = True) -> None:
        self.cfg, self.main = cfg, main
        self.path = Path(cfg.out_dir)
        self.state = RunState()
        self.log: MetricsLog | None = None
        self.mode = progress_mode(cfg.progress) if main else "none"
        """How the console shows the run: a line per epoch (line, bar) or nothing (none; ranks other than 0)."""

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def open(self, parts: Parts, resume: bool) -> None:
        """Start the run here, or continue it from ``last.pt`` (``resume``); refuses a resume without a checkpoint,
        of a finished run of another length, and a new run over an existing one."""
        self.path.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.checkpoint_path
        if resume:
            if not ckpt_path.exists():
                raise TrainingError(f"--resume: no checkpoint {ckpt_path} to resume from")
            finished_results(self.path, self.cfg.optim.epochs)  # a finished run of another length: refused
            self.restore(load_checkpoint(ckpt_path, parts.device), parts)
        elif ckpt_path.exists():
            raise TrainingError(f"{self.path} already holds a run ({ckpt_path}); pass --resume to continue it "
                                "or choose another out_dir (nothing was overwritten)")
        if self.main:
            self.cfg.save(self.path / "config.yaml")
            self.log = MetricsLog(self.path, self.cfg.tensorboard)
            self.log.truncate_after(self.state.epoch)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the metrics log (the main rank's)."""
        if self.log is not None:
            self.log.write(record)

    # --------------------------------------------------------------------------------------- checkpoint
    def checkpoint(self, parts: Parts) -> dict[str, Any]:
        """The ``last.pt`` of the run as it stands (format ``FORMAT_VERSION``)."""
        s, sel = self.state, parts.loader.selection
        return {
            "format_version": FORMAT_VERSION, "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(), "epoch": s.epoch, "rng": rng_state(parts.generator),
            "coreset": None if sel is None else {"indices": sel.indices.cpu(), "weights": sel.weights.cpu()},
            "best_val": s.best_val, "times": dict(s.times), "config": self.cfg.to_dict(),
            "grad_errors": list(s.grad_errors), "precision": parts.precision.name,
            **({} if parts.scheduler is None else {"scheduler": parts.scheduler.state_dict()}),
            **({} if parts.loader.cache is None else {"perturbations": parts.loader.cache.state_dict()}),
        }

    def check_resume(self, ckpt: dict[str, Any], parts: Parts) -> None:
        """Refuse (before anything is restored) a checkpoint that is damaged, of another format, trained with
        other settings (``RESUME_FREE`` aside) or in another precision, or whose states do not fit the parts."""
        path = self.checkpoint_path
        # before anything is compared (a tensor where a number belongs made `!=` ambiguous)
        check_resumable(ckpt, path, parts.generator, int(parts.loader.source.labels.numel()))
        version = ckpt.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise TrainingError(f"cannot resume: {path} has checkpoint format {version}, this version reads format "
                                f"{FORMAT_VERSION}; start a new out_dir")
        try:  # fields added since the checkpoint was written take their defaults
            saved = Config.from_dict(ckpt.get("config", {})).to_dict()
        except ConfigError as e:
            raise TrainingError(f"cannot resume: the config saved in {path} is not valid ({e})") from e
        now = self.cfg.to_dict()
        diff = sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])
        if diff:
            raise TrainingError(f"cannot resume: the checkpoint in {self.path} was trained with different settings "
                                f"for {diff}; resume with the saved config ({self.path / 'config.yaml'}) or start a "
                                "new out_dir")
        was = ckpt.get("precision") or legacy_precision(saved.get("amp"), parts.device)
        if was != parts.precision.name:
            flag = "false" if was == "fp32" else "true"
            raise TrainingError(f"cannot resume: the checkpoint in {self.path} was trained in {was} and this run "
                                f"would compute in {parts.precision.name}; resume with --set amp={flag}")
        check_state_dict(parts.model, ckpt["model"], path)
        check_optimizer_state(parts.optimizer, ckpt["optimizer"], path)
        if parts.loader.cache is not None:
            try:
                parts.loader.cache.check_state(ckpt.get("perturbations"))
            except ValueError as e:
                raise TrainingError(f"cannot resume: the perturbation cache in {path} is damaged or missing ({e}); "
                                    "restore the file, or start a new out_dir") from e

    def restore(self, ckpt: dict[str, Any], parts: Parts) -> None:
        """Continue from ``ckpt`` (checked first by ``check_resume``): the parts' states and ``state``."""
        self.check_resume(ckpt, parts)
        parts.model.load_state_dict(ckpt["model"])
        parts.optimizer.load_state_dict(ckpt["optimizer"])
        if parts.scheduler is not None and isinstance(ckpt.get("scheduler"), dict):
            parts.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], parts.generator)
        parts.loader.load_state_dict({"epoch": ckpt["epoch"], "coreset": ckpt.get("coreset"),
                                      **({} if parts.loader.cache is None else {"cache": ckpt["perturbations"]})})
        s = self.state
        s.epoch, s.best_val = ckpt["epoch"], float(ckpt.get("best_val", -1.0))
        s.times, s.grad_errors = dict(ckpt.get("times", {})), [float(e) for e in ckpt.get("grad_errors", [])]

    # ------------------------------------------------------------------------------------------ records
    def selection(self, srec: dict[str, Any], record: dict[str, Any]) -> None:
        """Log a selection round's record ``srec`` and account its time in ``state`` and in the epoch's ``record``."""
        self.write({"kind": "selection", **srec})
        self.state.add_times({"selection_attack": srec["time_selection_attack"],
                              "selection_solver": srec["time_selection_solver"]})
        record.update({k: srec[k] for k in ("time_selection_attack", "time_selection_solver", "grad_error")})
        if "time_error_pass" in srec:  # measured, not trained: outside train_seconds() and the cost
            self.state.add_times({"error_pass": srec["time_error_pass"]})
            record["time_error_pass"] = srec["time_error_pass"]
        if srec["grad_error"] is not None:
            self.state.grad_errors.append(float(srec["grad_error"]))

    def evaluation(self, record: dict[str, Any], seconds: float, model: nn.Module) -> None:
        """Account an epoch's evaluation (``record`` holds its results); keep ``best.pt`` at the best validation
        robust accuracy."""
        record["time_eval"] = seconds
        self.state.add_times({"eval": seconds})
        vkey = f"val_pgd{self.cfg.eval.val_pgd_steps}_acc"
        if vkey in record and record[vkey] > self.state.best_val:
            self.state.best_val = record[vkey]
            if self.main:
                save_atomic({"model": model.state_dict(), "epoch": self.state.epoch, "config": self.cfg.to_dict(),
                             "val_robust_acc": record[vkey]}, self.path / BEST)

    def end_epoch(self, record: dict[str, Any], parts: Parts) -> None:
        """Log the epoch's ``record``, then rewrite ``last.pt``; a console line (``mode`` line or bar)."""
        record["time_train_total"] = self.state.train_seconds()
        # log first: a kill between the two leaves a line past the checkpoint, which resume drops
        self.write(record)
        if self.main:
            save_atomic(self.checkpoint(parts), self.checkpoint_path)
            if self.mode in ("line", "bar"):
                print(epoch_line(record, self.cfg.optim.epochs), flush=True)

    def finish(self, final: dict[str, Any], seconds: float, parts: Parts) -> dict[str, Any]:
        """The final record (``final``: the final evaluation, ``seconds`` long), logged and written to
        ``results.json`` with the exported model beside it (model.safetensors + model.json [+ model_arch.py])."""
        s = self.state.summary()
        results: dict[str, Any] = {
            "kind": "final", "epoch": self.state.epoch, **final, "time_train_total": s["time_train_total"],
            "time_final_eval": seconds, "time_selection": s["time_selection"],
            "selection_rounds_with_error": s["selection_rounds_with_error"], "grad_error_mean": s["grad_error_mean"],
            "time_error_pass": s["time_error_pass"], **self.selection_summary(parts),
            "times": dict(self.state.times), "device": str(parts.device),
            "precision": precision_record(parts.precision), "world_size": parts.world.world_size}
        self.write(results)
        if self.main:
            write_json_atomic(self.path / RESULTS, results)
            rd = parts.run_data
            export_run_model(self.path, parts.model, self.cfg, rd.shape, rd.classes, results,
                             num_classes=rd.num_classes)
            if self.mode in ("line", "bar"):
                print(final_line(results), flush=True)
        return results

    def selection_summary(self, parts: Parts) -> dict[str, Any]:
        """How many selection rounds ran, and a note when a coreset method never got to choose (a warm start
        as long as the run): the run is then labelled by what it did."""
        ld = parts.loader
        if not ld.selector.subset:
            return {"selection_rounds": 0}
        rounds = ld.round_index(self.state.epoch)
        out: dict[str, Any] = {"selection_rounds": rounds}
        if rounds == 0:
            out["note"] = (f"no selection round ran (selection.warm_epochs {self.cfg.selection.warm_epochs} >= "
                           f"optim.epochs {self.cfg.optim.epochs}): every epoch trained on all data, as "
                           "selection.method=full does")
        return out
