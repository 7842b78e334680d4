"""A run's parts, built once from its ``Config`` and whatever the caller brought: the process world, device and
precision, data, model (wrapped in DistributedDataParallel in a world > 1), objective, optimiser, and the
``CoresetLoader`` with its selector. The trainer runs epochs over them; ``RunFolder`` keeps their files.

The order below is the order the parts always were built in: the global random stream (model initialisation,
the checks' forward passes) is drawn from in that order, so a run's weights do not depend on this module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config, ConfigError, ConfigTypeError
from advcoreset.config_checks import validate
from advcoreset.coreset import CoresetLoader
from advcoreset.data import DataSplits
from advcoreset.data.sources import TensorSource
from advcoreset.device import resolve_device
from advcoreset.objectives import Objective, build_objective, build_selection_objective
from advcoreset.optimizers import build_optimizer
from advcoreset.precision import Precision, resolve_precision
from advcoreset.progress import Reporter, make_progress, silent
from advcoreset.selection import Selector, ShardedSelector, build_selector
from advcoreset.training.build import RunData, builtin_data, builtin_model, user_data
from advcoreset.training.epoch import EpochContext
from advcoreset.training.evaluate import evaluate_model
from advcoreset.training.given import check_given, record_given
from advcoreset.training.preflight import check_against_data, check_model_and_optimizer
from advcoreset.world import (
    DistributedError,
    World,
    check_agreement,
    convert_sync_bn,
    default_threads,
    init_distributed,
    shutdown,
    sum_counts,
    wrap_ddp,
)


@dataclass
class Parts:
    """Everything a run trains with. ``model`` is the plain module (attacks, selection, evaluation and
    checkpoints use it); ``ddp`` the DistributedDataParallel wrapper the loss runs through in a world > 1."""

    cfg: Config
    """The config as recorded in ``config.yaml`` (a caller's Dataset / model described, never a default)."""
    world: World
    device: torch.device
    precision: Precision
    """bf16 autocast or fp32 for the training step and the selection pass (evaluation is fp32)."""
    run_data: RunData
    model: nn.Module
    ddp: nn.Module | None
    objective: Objective
    optimizer: torch.optim.Optimizer
    base_lrs: list[float] | None
    """A caller's optimiser keeps its groups' own rates: the schedule scales them (``optim.schedule``)."""
    scheduler: Any
    generator: torch.Generator
    """The run's data stream: order, augmentation, resampling, the selector's draws (checkpointed)."""
    loader: CoresetLoader
    progress: Reporter
    """Progress of the selection pass and the final evaluation (rank 0 only)."""

    def autocast(self) -> AbstractContextManager[Any]:
        return self.precision.autocast()

    @property
    def images(self) -> Tensor:
        """(N, C, H, W) uint8 training images on the device (built-in datasets only)."""
        if not isinstance(self.loader.source, TensorSource):
            raise AttributeError("the training set is a Dataset read through a DataLoader: it has no image tensor")
        return self.loader.source.images

    def context(self, epoch: int, checkpoint: str) -> EpochContext:
        """What ``train_epoch`` needs besides the batches, for the epoch after ``epoch`` completed ones."""
        w = self.world
        return EpochContext(self.model, self.objective, self.optimizer, self.cfg.optim, self.device, epoch,
                            self.autocast, checkpoint, self.ddp,
                            (lambda t: sum_counts(t, w)) if w.is_distributed else None, self.base_lrs, self.scheduler,
                            self.loader.remember if self.loader.cache is not None else None,
                            self.loader.rest_objective)

    def evaluate(self, final: bool = False, model: nn.Module | None = None) -> dict[str, Any]:
        """Clean and PGD accuracy on the test subset (and validation robust accuracy if a split exists), split
        over the ranks in a world > 1. ``final``: eval.pgd_steps with restarts, AutoAttack if asked, the
        objective's own threats."""
        rd = self.run_data
        return evaluate_model(model or self.model, self.objective, self.cfg, rd.test, rd.val, self.device, final,
                              progress=self.progress, world=self.world)

    def close(self, synchronize: bool = False) -> None:
        """Leave the process world (``synchronize``: after every rank got here; not after a failure)."""
        shutdown(self.world, synchronize=synchronize)


def check_arguments(cfg: Config, data: Any, model: Any, train_set: Any, optimizer: Any, scheduler: Any,
                    keys: Any) -> None:
    """A ConfigError for parts given in combinations that cannot work, before anything is built."""
    if optimizer is not None and model is None:
        raise ConfigError("an optimizer was given without its model: pass model=... too")
    if scheduler is not None and (optimizer is None or cfg.optim.schedule != "none"):
        raise ConfigError("a scheduler needs its optimizer (optimizer=...) and optim.schedule=none: the loop "
                          "sets no learning rate then, the scheduler does")
    if data is not None and train_set is not None:
        raise ConfigError("pass either data (DataSplits) or train_set/test_set (Datasets), not both")
    if keys is not None and train_set is None:
        raise ConfigError("keys= names the fields of dict items of train_set/test_set: pass those Datasets too")


def _world(cfg: Config) -> tuple[World, torch.device]:
    """This process's place in the job (a world of one without torchrun), its device and CPU threads."""
    device = resolve_device(cfg.device)
    world = init_distributed(cfg.device)
    if world.is_distributed:  # one device per local rank
        device = world.device
    threads = cfg.threads or default_threads(world)
    if threads:
        torch.set_num_threads(threads)
    return world, device


def memory_format(cfg: Config, device: torch.device, precision: Precision) -> torch.memory_format:
    """channels_last where it is fast: CUDA, and the CPU's bf16 convolutions (benchmarks/README.md, "Precision");
    fp32 CPU runs keep the contiguous layout, and their numbers, as before."""
    fast = device.type == "cuda" or precision.dtype is not None
    return torch.channels_last if (fast and cfg.channels_last) else torch.contiguous_format


def _model(cfg: Config, model: Any, optimizer: Any, rd: RunData, device: torch.device) -> nn.Module:
    """The caller's model (checked with its optimiser on a sample) or the registered one, on ``device``."""
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out: nn.Module = (model if model is not None else builtin_model(cfg, rd)).to(device)
    if model is not None:  # a caller's model and optimiser, checked on a sample before any training
        check_model_and_optimizer(out, optimizer, rd.source.sample(2), rd.num_classes)
    return out


def build_parts(cfg: Config, data: DataSplits | None = None, *, model: nn.Module | None = None, train_set: Any = None,
                test_set: Any = None, optimizer: torch.optim.Optimizer | None = None, selection_set: Any = None,
                scheduler: Any = None, keys: Any = None, model_factory: str | None = None,
                progress: Callable[[str, int | None], Any] | None = None) -> Parts:
    """Build a run's parts (see ``Trainer`` for the arguments). ``progress``: what the loader reports its selection
    pass to (default: the parts' own reporter)."""
    cfg = validate(cfg)
    check_arguments(cfg, data, model, train_set, optimizer, scheduler, keys)
    check_given(cfg, model=model, train_set=train_set, data=data, factory=model_factory)
    world, device = _world(cfg)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.amp, device)
    mf = memory_format(cfg, device, precision)
    rd = (builtin_data(cfg, device, mf, data) if train_set is None
          else user_data(cfg, train_set, test_set, device, mf, selection_set, keys))
    check_against_data(cfg, rd.source.labels.cpu(), rd.shape, rd.num_classes)  # before any training
    check_agreement(world, cfg.to_dict(), rd.source.labels)  # torchrun: every rank runs the same job
    reporter: Reporter = make_progress(cfg.progress) if world.is_main else silent
    net = _model(cfg, model, optimizer, rd, device)
    recorded = record_given(cfg, model=model, factory=model_factory, train_set=train_set, test_set=test_set,
                            keys=keys, rd=rd)
    # Module.to takes memory_format (it forwards **kwargs to torch._C._nn._parse_to); its stubs omit it
    net = convert_sync_bn(net.to(memory_format=mf), world, cfg.optim.sync_bn)  # type: ignore[call-overload]
    ddp = wrap_ddp(net, world) if world.is_distributed else None
    objective = build_objective(cfg.objective)
    sel_objective = build_selection_objective(cfg.objective, cfg.selection)
    selector = build_selector(cfg.selection, cfg.seed)  # the one selector of the run
    opt = optimizer or build_optimizer(net.parameters(), cfg.optim)
    base_lrs = None if optimizer is None else [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(cfg.seed)
    parts = Parts(recorded, world, device, precision, rd, net, ddp, objective, opt, base_lrs, scheduler, generator,
                  None, reporter)  # type: ignore[arg-type]  # the loader is built next, on these parts
    parts.loader = build_loader(cfg, parts, sel_objective, selector,
                                progress or (lambda desc, total: parts.progress(desc, total)))
    return parts


def build_loader(cfg: Config, parts: Parts, objective: Objective, selector: Selector,
                 progress: Callable[[str, int | None], Any]) -> CoresetLoader:
    """The run's ``CoresetLoader``: ``selector`` on the config's schedule over the training source, the selection
    ``objective``, global batches of ``optim.batch_size`` of which each rank takes its slice, the run's generator.
    In a world > 1 the selector is sharded: each rank attacks and differentiates its row range of the training set
    (``ShardedSelector``, ``selection.distributed``)."""
    s, rd, world = cfg.selection, parts.run_data, parts.world
    measure = s.measure_error
    if world.is_distributed:
        check_shardable(cfg, rd)
        measure = False
        # the owners' solver seed of a round is the run seed and the round's epoch, as it always was
        selector = ShardedSelector(selector, world, s.distributed, second_round=s.partition_rounds == 2,
                                   solver_seed=lambda r: cfg.seed * 1000 + s.warm_epochs + r * s.interval)
    return CoresetLoader(
        rd.source, parts.model, objective, method=selector, warm_epochs=s.warm_epochs, interval=s.interval,
        weight_rule=None if cfg.optim.weight_norm == "auto" else cfg.optim.weight_norm,
        batch_size=cfg.optim.batch_size, grad_features=s.grad_features, generator=parts.generator,
        pool=s.pool, points=s.points, warm_start=s.warm_start, rest=s.rest, seed=cfg.seed, device=parts.device,
        autocast=parts.autocast,
        num_classes=rd.num_classes, progress=progress, measure_error=measure, rank=world.rank,
        world=world.world_size, split="global_batch")


def check_shardable(cfg: Config, rd: RunData) -> None:
    """What a world > 1 does not run yet, refused before any work: a Dataset read through a DataLoader, a
    selection pool, a gradient error measured for a gradient-free selector."""
    if not isinstance(rd.source, TensorSource):
        raise DistributedError("training under torchrun needs the built-in in-memory datasets (a "
                               "TensorSource); a Dataset read through a DataLoader runs in one process only")
    if cfg.selection.pool is not None:
        raise DistributedError("selection.pool is not supported under torchrun yet: run it in one process, or "
                               "set selection.pool to null")
    if cfg.selection.points == "cached":
        raise DistributedError("selection.points=cached is not supported under torchrun yet (each rank knows only "
                               "its own batches' perturbations): run it in one process, or set selection.points "
                               "to attack")
    if cfg.selection.measure_error is True:
        raise ConfigError("selection.measure_error=true is not supported under torchrun yet: set it to auto "
                          "(off there) or false, or measure in one process")
