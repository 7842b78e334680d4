"""The multi-rank half of tests/distributed/test_distributed.py: ``torchrun ... distributed_worker.py OUT [KILL_RANK]``.

Every rank trains the tiny problems on its part of every global batch (``data.iterate_batches`` with
``rank, world``) and runs the sharded selections (``selection.ShardedSelector``), then saves what it got to
OUT/rank<r>.pt; the test compares that with single-process runs of the same problems (defined here, so both
sides build exactly the same data and model). Then the real trainer runs ``trainer_config`` to the end in
OUT/whole. With KILL_RANK, the same run starts again in OUT/killed and that rank dies by SIGKILL after epoch
``KILL_AFTER``, while the others enter the next epoch's collectives: they must notice (and write
OUT/peer_lost_rank<r>) instead of waiting forever.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from advcoreset.config import AttackConfig, Config, ObjectiveConfig, SelectionConfig
from advcoreset.config_checks import load_config
from advcoreset.data import iterate_batches
from advcoreset.evaluation.robust import accuracy
from advcoreset.objectives import Objective, build_objective
from advcoreset.selection import GradShard, Selection, ShardedSelector, build_selector
from advcoreset.training import Trainer
from advcoreset.world import World, init_distributed, reduce_accuracies, shard_range, shutdown, wrap_ddp

N, CLASSES, SIDE = 96, 3, 8
EPOCHS = 2


def images_labels() -> tuple[Tensor, Tensor]:
    """(N, 1, 8, 8) uint8 images with a class-dependent bright square plus noise; (N,) labels."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (N,), generator=g)
    x = torch.rand(N, 1, SIDE, SIDE, generator=g) * 0.5
    for c in range(CLASSES):
        x[labels == c, :, 2 * c:2 * c + 3, 2 * c:2 * c + 3] += 0.5
    return (x * 255).round().to(torch.uint8), labels


def tiny_model() -> nn.Module:
    """No BatchNorm: per-rank batch statistics would differ from one process's without SyncBatchNorm,
    which PyTorch runs on CUDA only."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIDE * SIDE, CLASSES))


def objective() -> Objective:
    """PGD-AT with a deterministic attack (no random start), so one process and N ranks attack alike."""
    return build_objective(ObjectiveConfig(name="pgd", attack=AttackConfig(eps=0.1, alpha=0.05, steps=2,
                                                                           random_start=False)))


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def train_runs() -> dict[str, tuple[Tensor, Tensor, int]]:
    """name -> (indices, weights, global batch). The coreset's 41 points leave a last global batch of one
    example, so rank 1 takes a weight-0 stand-in there."""
    g = torch.Generator().manual_seed(2)
    core = torch.sort(torch.randperm(N, generator=g)[:41]).values
    return {"full": (torch.arange(N), torch.ones(N), 32),
            "coreset": (core, 0.5 + 2.5 * torch.rand(41, generator=g), 16)}


def train_ranked(env: World, indices: Tensor, weights: Tensor, batch: int) -> nn.Module:
    """EPOCHS epochs on this rank's slices of every global batch, through DDP."""
    images, labels = images_labels()
    model = tiny_model()
    ddp, opt, obj = wrap_ddp(model, env), optimizer(model), objective()
    gen = torch.Generator().manual_seed(3)
    for _ in range(EPOCHS):
        for b in iterate_batches(images, labels, indices, weights, batch, gen, rank=env.rank, world=env.world_size):
            x_adv = obj.attack(model, b.x, b.y)
            out = obj.loss_at(ddp, b.x, x_adv, b.y, b.w, norm=b.norm)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    return model


def grad_problem() -> tuple[Tensor, Tensor]:
    """(150, 12) clustered per-example gradients (5 clusters per class) and (150,) labels."""
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, CLASSES, (150,), generator=g)
    centres = torch.randn(CLASSES, 5, 12, generator=g)
    which = torch.randint(0, 5, (150,), generator=g)
    return centres[labels, which] + 0.1 * torch.randn(150, 12, generator=g), labels


def rank_rows(rank: int, world: int, n: int = 150) -> Tensor:
    """Strided global positions, so every class is split over the ranks and rows must be re-ordered."""
    return torch.arange(rank, n, world)


SELECTIONS = {  # name -> (mode, config, second round)
    "gather_craig": ("gather", SelectionConfig(method="craig", fraction=0.2), False),
    "gather_gradmatch": ("gather", SelectionConfig(method="gradmatch", fraction=0.2), False),
    "partition_craig": ("partition", SelectionConfig(method="craig", fraction=0.2), False),
    "partition2_craig": ("partition", SelectionConfig(method="craig", fraction=0.2), True),
    "partition2_gradmatch": ("partition", SelectionConfig(method="gradmatch", fraction=0.2), True),
    "random": ("gather", SelectionConfig(method="random", fraction=0.2), False),
}
SELECTION_SEED, SOLVER_SEED, GENERATOR_SEED = 0, 7, 5

# The real trainer on a tiny problem: a warm epoch on all data, then a CRAIG coreset (gather mode) whose
# weights enter the loss per batch; crops drawn from the run generator; a deterministic attack, so one
# process and two ranks attack alike. One selection round only: two ranks' weights agree with one
# process's to rounding, and a later round on those weights can break a near-tie of CRAIG's greedy the
# other way (a different coreset, not a bug), so a second round would make the comparison depend on the CPU.
TRAINER_OVERRIDES = [
    "data.name=digits", "data.train_subset=240", "data.test_subset=60", "data.val_size=40", "data.augment=crop",
    "data.crop_padding=1", "model.width=4", "objective.attack.eps=0.1", "objective.attack.alpha=0.04",
    "objective.attack.steps=2", "objective.attack.random_start=false", "selection.method=craig",
    "selection.fraction=0.3", "selection.warm_epochs=1", "selection.interval=1", "selection.attack_steps=null",
    "optim.weight_norm=batch", "amp=false",  # fp32: N ranks match one process to ATOL
    "optim.epochs=2", "optim.batch_size=64", "optim.lr=0.2", "eval.pgd_steps=2", "eval.val_pgd_steps=2",
    "eval.every=1", "progress=none", "threads=1", "device=cpu"]
KILL_AFTER = 1
PARTITION = ["selection.distributed=partition", "selection.partition_rounds=2", "optim.weight_norm=epoch",
             "optim.epochs=2", "eval.every=0"]


def sharded_selection(env: World, grads: Tensor, labels: Tensor, mode: str, cfg: SelectionConfig,
                      second: bool) -> dict[str, object]:
    """This rank's result of a ``ShardedSelector`` round over its strided rows (``rank_rows``)."""
    sharded = ShardedSelector(build_selector(cfg, SELECTION_SEED), env, mode, second_round=second,
                              solver_seed=lambda r: SOLVER_SEED)
    gen = torch.Generator().manual_seed(GENERATOR_SEED)
    rows = rank_rows(env.rank, env.world_size)
    sel: Selection = (sharded.select_shard(GradShard(grads[rows], labels[rows], rows), labels, gen)
                      if sharded.needs_grads else sharded.select(None, labels, gen))
    rec = sel.record
    return {"indices": sel.indices, "weights": sel.weights, "bytes_sent": rec["bytes_sent_rank"],
            "bytes_total": rec["bytes_total"], "grad_error": rec["grad_error"], "times": rec["time_selection_split"]}


def trainer_config(out_dir: Path) -> Config:
    return load_config(None, [*TRAINER_OVERRIDES, f"out_dir={out_dir}"])


def main(out: Path, kill_rank: int | None) -> None:
    torch.set_num_threads(1)
    env = init_distributed("cpu", timeout_s=60)
    res: dict[str, object] = {"world_size": env.world_size}
    for name, (idx, w, batch) in train_runs().items():
        model = train_ranked(env, idx, w, batch)
        res[f"train_{name}"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if name == "full":
            images, labels = images_labels()
            lo, hi = shard_range(N, env.rank, env.world_size)
            res["eval_clean_acc"] = reduce_accuracies(
                {"clean_acc": accuracy(model, images[lo:hi], labels[lo:hi])}, hi - lo, env)["clean_acc"]
    grads, labels = grad_problem()
    for name, (mode, cfg, second) in SELECTIONS.items():
        res[f"sel_{name}"] = sharded_selection(env, grads, labels, mode, cfg, second)
    torch.save(res, out / f"rank{env.rank}.pt")
    Trainer(trainer_config(out / "whole")).run()  # Trainer.run keeps the process group (train() ends it)
    Trainer(load_config(None, [*TRAINER_OVERRIDES, *PARTITION, f"out_dir={out / 'partition'}"])).run()
    if kill_rank is not None:
        _die_or_notice(kill_rank, out)
    shutdown(env)


class _DiesAfter(Trainer):
    """The trainer, except that rank ``kill_rank`` dies by SIGKILL once epoch ``KILL_AFTER`` is saved."""

    kill_rank = 1

    def _epoch(self) -> None:
        super()._epoch()
        if self.state.epoch == KILL_AFTER:
            torch.distributed.barrier()  # rank 0 has written this epoch's last.pt
            if self.world.rank == self.kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)


def _die_or_notice(kill_rank: int, out: Path) -> None:
    trainer = _DiesAfter(trainer_config(out / "killed"))
    trainer.kill_rank = kill_rank
    try:
        trainer.run()
    except Exception as e:  # noqa: BLE001 - any failure of the next collective is the expected outcome
        (out / f"peer_lost_rank{trainer.world.rank}").write_text(type(e).__name__)
        sys.exit(3)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
