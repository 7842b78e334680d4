"""The built-in training run: the parts built from one ``Config`` (``training.parts``), the epochs run over them,
the run's files kept by a ``RunFolder`` (``metrics.jsonl`` appended and ``last.pt`` rewritten atomically every
epoch; ``resume=True`` reaches bit-identical weights on CPU). The loop names no attack, objective, selector or
dataset. Under ``torchrun`` (a world > 1) the same loop runs on every rank: the loss through
DistributedDataParallel, each rank its slice of every global batch and of the selection pass; rank 0 writes.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from advcoreset.config import Config
from advcoreset.data import DataSplits
from advcoreset.training.epoch import train_epoch
from advcoreset.training.parts import build_parts
from advcoreset.training.run_folder import RunFolder, RunState, final_evaluation

__all__ = ["Trainer", "train"]


class Trainer:
    """Composes data, model, objective, optimiser and a ``CoresetLoader`` from one ``Config`` and trains.

    ``model`` (any classifier of (B, C, H, W) in [0, 1] to logits), ``train_set``/``test_set`` (map-style
    Datasets of (image, int label)) and ``optimizer`` (over ``model``'s parameters) replace the parts the
    config would build; ``data`` replaces the dataset the config names with in-memory splits;
    ``selection_set``: ``train_set`` without its random augmentation, which the selection pass reads;
    ``keys``: (image key, label key) when those datasets' items are dicts (``data.keyed``); ``model_factory``:
    the "package.module:function" that builds ``model``, recorded in config.yaml and model.json. The saved
    config names a caller's Dataset / model ``user`` and describes it (``training.given``)."""

    def __init__(self, cfg: Config, data: DataSplits | None = None, *, model: torch.nn.Module | None = None,
                 train_set: Any = None, test_set: Any = None, optimizer: torch.optim.Optimizer | None = None,
                 selection_set: Any = None, scheduler: Any = None, keys: Any = None,
                 model_factory: str | None = None) -> None:
        self.parts = p = build_parts(cfg, data, model=model, train_set=train_set, test_set=test_set,
                                     optimizer=optimizer, selection_set=selection_set, scheduler=scheduler,
                                     keys=keys, model_factory=model_factory)
        self.cfg, self.world, self.device, self.precision = p.cfg, p.world, p.device, p.precision
        self.run_data, self.model, self.objective, self.optimizer = p.run_data, p.model, p.objective, p.optimizer
        self.loader, self.generator = p.loader, p.generator
        self.folder = RunFolder(self.cfg, self.world.is_main)

    @property
    def state(self) -> RunState:
        """Epochs done, best validation score, cumulative times, gradient errors (``RunFolder.state``)."""
        return self.folder.state

    @property
    def progress(self) -> Any:
        """The reporter of the selection pass and the final evaluation (rank 0's; silent elsewhere)."""
        return self.parts.progress

    @progress.setter
    def progress(self, reporter: Any) -> None:
        self.parts.progress = reporter

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 training labels on the device."""
        return self.loader.source.labels

    @property
    def images(self) -> torch.Tensor:
        """(N, C, H, W) uint8 training images on the device (built-in datasets only)."""
        return self.parts.images

    def train_epoch(self, indices: torch.Tensor, weights: torch.Tensor, bar: Any = None) -> dict[str, float]:
        """One pass over ``indices`` (k,) with ``weights`` (k,) under the run's weight rule (``optim.weight_norm``;
        auto: the selector's). Uniform weights give the plain mean loss under every rule."""
        ld = self.loader
        return train_epoch(self.parts.context(self.state.epoch, str(self.folder.checkpoint_path)),
                           ld.batches_for(indices, weights), ld.count_batches(indices.numel()), ld.loss_norm, bar)

    def evaluate(self, final: bool = False, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """Clean and PGD accuracy on the test subset (and validation robust accuracy if a split exists).
        ``final``: PGD with eval.pgd_steps and restarts, AutoAttack if asked, the objective's own threats."""
        return self.parts.evaluate(final, model)

    def _epoch(self) -> None:
        """One epoch: a selection round when due, the pass over the coreset, an evaluation when due, the record
        and ``last.pt``."""
        ld, folder, cfg = self.loader, self.folder, self.cfg
        record: dict[str, Any] = {"kind": "epoch", "epoch": self.state.epoch + 1, "world_size": self.world.world_size}
        self.world.seed_epoch(cfg.seed, self.state.epoch)
        srec = ld.start_epoch()
        if srec is not None:
            folder.selection(srec, record)
        record["phase"] = ld.phase
        # a bar on a terminal, else a line at most once per progress interval: an epoch is a long step like any other
        with self.progress(f"epoch {self.state.epoch + 1}/{cfg.optim.epochs} [{record['phase']}]", len(ld)) as task:
            stats = train_epoch(self.parts.context(self.state.epoch, str(folder.checkpoint_path)), ld.epoch_batches(),
                                len(ld), ld.loss_norm, task)
        record.update(stats)
        self.state.add_times({k[5:]: v for k, v in stats.items() if k.startswith("time_")})
        self.state.epoch += 1
        ld.end_epoch()
        if cfg.eval.every and self.state.epoch % cfg.eval.every == 0 and self.state.epoch != cfg.optim.epochs:
            t = time.perf_counter()
            record.update(self.evaluate())
            folder.evaluation(record, time.perf_counter() - t, self.model)
        folder.end_epoch(record, self.parts)

    def run(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``optim.epochs`` (or stop after ``stop_after`` completed epochs, for tests), then
        evaluate; returns (and writes to results.json) the final metrics."""
        self.folder.open(self.parts, resume)
        try:
            while self.state.epoch < self.cfg.optim.epochs:
                if stop_after is not None and self.state.epoch >= stop_after:
                    return {"stopped_after": self.state.epoch}
                self._epoch()
            t = time.perf_counter()
            with final_evaluation(self.folder.path, self.state.epoch):  # on failure: --resume reruns only this
                final = self.evaluate(final=True)
            return self.folder.finish(final, time.perf_counter() - t, self.parts)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {self.folder.checkpoint_path} holds epoch {self.state.epoch}; continue with "
                  "--resume", flush=True)
            raise
        finally:
            self.folder.close()


def train(cfg: Config, *, resume: bool = False, stop_after: int | None = None, data: DataSplits | None = None,
          model: torch.nn.Module | None = None, train_set: Any = None, test_set: Any = None,
          optimizer: torch.optim.Optimizer | None = None, selection_set: Any = None,
          scheduler: Any = None, keys: Any = None, model_factory: str | None = None) -> dict[str, Any]:
    """Train (and finally evaluate) the run described by ``cfg``, with any parts the caller brings; see
    ``Trainer`` and ``Trainer.run``."""
    trainer = Trainer(cfg, data, model=model, train_set=train_set, test_set=test_set, optimizer=optimizer,
                      selection_set=selection_set, scheduler=scheduler, keys=keys, model_factory=model_factory)
    try:
        results = trainer.run(resume=resume, stop_after=stop_after)
    except BaseException:
        trainer.parts.close()  # no barrier: a peer may be gone
        raise
    trainer.parts.close(synchronize=True)
    return results
