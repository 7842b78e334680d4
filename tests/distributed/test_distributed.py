"""Distributed pieces: 2 gloo ranks under torchrun (one launch for the module) against one process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from advcoreset.config import SelectionConfig
from advcoreset.coreset import CoresetLoader, CoresetSampler
from advcoreset.coreset.sampler import CoresetBatches
from advcoreset.coreset.select import Pool, selection_gradients
from advcoreset.data import Part, TensorSource, iterate_batches, random_crop_flip, rank_part
from advcoreset.evaluation.robust import accuracy
from advcoreset.selection import (
    GradShard,
    RandomSelector,
    ShardedSelector,
    approximation_error,
    build_selector,
    class_budget,
    fraction_of,
)
from advcoreset.selection.sharded import class_owners, round_bytes
from advcoreset.world import (
    DistributedError,
    World,
    convert_sync_bn,
    init_distributed,
    launch_info,
    rank_device,
    reduce_accuracies,
    shard_range,
    use_sync_bn,
)

_spec = importlib.util.spec_from_file_location("distributed_worker", Path(__file__).with_name("distributed_worker.py"))
assert _spec is not None and _spec.loader is not None
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

# Two ranks sum a global batch's gradient in another order than one process (DDP averages per-rank
# sums), so float32 weights agree to rounding (a few ulps of weights of size ~0.3), not bit for bit;
# 1e-5 is far above that rounding and far below a wrong normaliser, which scales a step by 2.
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One job for the module: two torchrun "nodes" of one rank each on a loopback rendezvous (so RANK
    and LOCAL_RANK differ), which train, evaluate and select; then rank 1 is killed with SIGKILL."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = _free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={r}",
         "--master_addr=127.0.0.1", f"--master_port={port}", str(Path(__file__).with_name("distributed_worker.py")),
         str(out), "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs, codes = [], []
    for a in agents:
        try:
            logs.append(a.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for b in agents:
                b.kill()
            pytest.fail("the 2-node job hung past 240 s")
        codes.append(a.returncode)
    missing = [r for r in range(2) if not (out / f"rank{r}.pt").exists()]
    assert not missing, f"ranks {missing} wrote no results:\n" + "\n".join(x[-3000:] for x in logs)
    return {"ranks": [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)], "codes": codes,
            "peer_lost": (out / "peer_lost_rank0").exists(), "logs": logs, "out": out}


@pytest.fixture(scope="module")
def resumed(launch: dict[str, Any]) -> dict[str, Any]:
    """``--resume`` of the killed trainer run, under torchrun (one node, two ranks), through the CLI."""
    run = launch["out"] / "killed"
    before = torch.load(run / "last.pt", weights_only=True)["epoch"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "advcoreset",
           "train", "--out", str(run), "--resume"]
    try:
        done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the resumed 2-rank job hung past 240 s")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return {"epoch_before": before, "run": run}


@pytest.fixture(scope="module")
def ranks(launch: dict[str, Any]) -> list[dict[str, Any]]:
    return launch["ranks"]


def test_two_nodes_rendezvous_and_a_killed_rank_stops_the_job(launch: dict[str, Any]) -> None:
    assert [r["world_size"] for r in launch["ranks"]] == [2, 2]
    # rank 1's SIGKILL: its agent fails, and rank 0 sees its collective fail instead of waiting for ever
    assert launch["codes"][1] != 0 and launch["codes"][0] != 0, launch["logs"]
    assert launch["peer_lost"], launch["logs"][0][-3000:]


def _state(run: Path) -> dict[str, Any]:
    return torch.load(run / "last.pt", weights_only=True)


def test_trainer_two_ranks_equal_one_process(launch: dict[str, Any], tmp_path: Path) -> None:
    from advcoreset.training import Trainer, train
    from advcoreset.training.logging import read_metrics

    cfg = W.trainer_config(tmp_path / "one")
    start = {k: p.detach().clone() for k, p in Trainer(cfg).model.named_parameters()}
    train(cfg)
    one, two = _state(tmp_path / "one"), _state(launch["out"] / "whole")
    for key, value in one["model"].items():
        assert key not in start or not torch.allclose(value, start[key], atol=1e-3), f"{key} did not train"
        torch.testing.assert_close(two["model"][key], value, atol=ATOL, rtol=0)  # ATOL: see its comment
    # gather selection on the same model and points: the single-process coreset, bit for bit
    assert torch.equal(two["coreset"]["indices"], one["coreset"]["indices"])
    assert torch.equal(two["coreset"]["weights"], one["coreset"]["weights"])
    m1 = read_metrics(tmp_path / "one" / "metrics.jsonl")
    m2 = read_metrics(launch["out"] / "whole" / "metrics.jsonl")
    e1, e2 = [r for r in m1 if r["kind"] == "epoch"], [r for r in m2 if r["kind"] == "epoch"]
    assert [r["epoch"] for r in e2] == [1, 2]  # rank 0 alone logs
    for a, b in zip(e1, e2, strict=True):  # statistics summed over the ranks' slices
        assert (a["n_train"], a["world_size"], b["world_size"]) == (b["n_train"], 1, 2)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b.get("test_clean_acc") == pytest.approx(a.get("test_clean_acc"), abs=1e-12)  # split evaluation
    sel = [r for r in m2 if r["kind"] == "selection"]
    assert len(sel) == 1 and all(r["distributed_mode"] == "gather" and r["bytes_total"] > 0 for r in sel)
    assert sel[0]["grad_error"] == pytest.approx(
        [r for r in m1 if r["kind"] == "selection"][0]["grad_error"], abs=1e-5)
    res = json.loads((launch["out"] / "whole" / "results.json").read_text())
    assert res["world_size"] == 2 and res["test_n"] == 60


def test_trainer_partition_mode_runs_and_reports(launch: dict[str, Any]) -> None:
    from advcoreset.training.logging import read_metrics

    run = launch["out"] / "partition"
    sel = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "selection"]
    assert len(sel) == 1 and sel[0]["distributed_mode"] == "partition" and 0 < sel[0]["grad_error"] < 1
    assert set(sel[0]["time_selection_split"]) == {"attack", "gradient", "communication", "solver"}
    chosen = torch.load(run / "last.pt", weights_only=True)["coreset"]["indices"]
    assert chosen.numel() == sel[0]["coreset_size"] == 80  # two rounds keep the exact budget: 0.3 x 24 per class
    assert json.loads((run / "results.json").read_text())["world_size"] == 2


def test_resume_under_torchrun_reaches_the_uninterrupted_weights(launch: dict[str, Any],
                                                                 resumed: dict[str, Any]) -> None:
    assert resumed["epoch_before"] == W.KILL_AFTER < 2  # the kill left a run to finish
    whole, again = _state(launch["out"] / "whole"), _state(resumed["run"])
    assert again["epoch"] == 2
    for key, value in whole["model"].items():
        assert torch.equal(again["model"][key], value), key


def _train_one_process(indices: torch.Tensor, weights: torch.Tensor, batch: int) -> nn.Module:
    """The single-process path as the trainer runs it: iterate_batches, weighted mean per batch."""
    images, labels = W.images_labels()
    model = W.tiny_model()
    opt, obj = W.optimizer(model), W.objective()
    gen = torch.Generator().manual_seed(3)
    for _ in range(W.EPOCHS):
        for b in iterate_batches(images, labels, indices, weights, batch, gen):
            out = obj.loss_at(model, b.x, obj.attack(model, b.x, b.y), b.y, b.w)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("run", ["full", "coreset"])
def test_two_ranks_reach_the_single_process_weights(ranks: list[dict[str, Any]], run: str) -> None:
    idx, w, batch = W.train_runs()[run]
    ref = _train_one_process(idx, w, batch).state_dict()
    start = W.tiny_model().state_dict()
    for key, value in ref.items():
        assert not torch.allclose(value, start[key], atol=1e-3), f"{key} did not train"
        for r in ranks:
            torch.testing.assert_close(r[f"train_{run}"][key], value, atol=ATOL, rtol=0)
        assert torch.equal(ranks[0][f"train_{run}"][key], ranks[1][f"train_{run}"][key])


def test_evaluation_split_over_ranks_sums_counts(ranks: list[dict[str, Any]]) -> None:
    images, labels = W.images_labels()
    idx, w, batch = W.train_runs()["full"]
    whole = accuracy(_train_one_process(idx, w, batch), images, labels)
    assert ranks[0]["eval_clean_acc"] == ranks[1]["eval_clean_acc"] == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("method", ["craig", "gradmatch"])
def test_gather_equals_single_process_selection(ranks: list[dict[str, Any]], method: str) -> None:
    grads, labels = W.grad_problem()
    _, cfg, _ = W.SELECTIONS[f"gather_{method}"]
    ref = build_selector(cfg, W.SELECTION_SEED).select(grads, labels, torch.Generator().manual_seed(W.SOLVER_SEED))
    # The guarantee holds when the solver draws no randomness; make sure this problem is such a case.
    assert all(c.get("filled", 0) == 0 and not c.get("partitioned", False) for c in ref.stats["classes"].values())
    for r in ranks:
        got = r[f"sel_gather_{method}"]
        assert torch.equal(got["indices"], ref.indices)
        assert torch.equal(got["weights"], ref.weights)
        assert got["grad_error"] == pytest.approx(approximation_error(grads, ref.indices, ref.weights), abs=1e-6)


def test_gradient_free_selector_runs_on_every_rank_like_one_process(ranks: list[dict[str, Any]]) -> None:
    _, labels = W.grad_problem()
    ref = RandomSelector(0.2).select(None, labels, torch.Generator().manual_seed(W.GENERATOR_SEED))
    for r in ranks:
        assert torch.equal(r["sel_random"]["indices"], ref.indices)
        assert r["sel_random"]["bytes_total"] == 0


@pytest.mark.parametrize("name", ["partition_craig", "partition2_craig", "partition2_gradmatch"])
def test_partition_error_is_reported_and_below_random(ranks: list[dict[str, Any]], name: str) -> None:
    grads, labels = W.grad_problem()
    got = ranks[0][f"sel_{name}"]
    assert torch.equal(got["indices"], ranks[1][f"sel_{name}"]["indices"])
    err = approximation_error(grads, got["indices"], got["weights"])
    assert got["grad_error"] == pytest.approx(err, abs=1e-6)
    rand = [approximation_error(grads, s.indices, s.weights) for s in
            (RandomSelector(0.2).select(None, labels, torch.Generator().manual_seed(i)) for i in range(20))]
    assert err < sum(rand) / len(rand)
    # The second round keeps exactly the single-process budget; one round rounds up at most once per
    # class on each rank but the first.
    budget = sum(class_budget(0.2, int(n)) for n in torch.bincount(labels))
    size = got["indices"].numel()
    assert size == budget if name.startswith("partition2") else budget <= size <= budget + W.CLASSES


def _rows_leaving(rows_of_rank: list[torch.Tensor], labels: torch.Tensor) -> int:
    owners = class_owners(torch.bincount(labels), 2)
    return sum(int((owners[labels[rows]] != r).sum()) for r, rows in enumerate(rows_of_rank))


def test_bytes_counted_match_the_shape_formula(ranks: list[dict[str, Any]]) -> None:
    grads, labels = W.grad_problem()
    d, world = grads.shape[1], 2
    rows = [W.rank_rows(r, world) for r in range(world)]
    for name, (mode, cfg, second) in W.SELECTIONS.items():
        if name == "random":
            continue
        got = ranks[0][f"sel_{name}"]
        if not second:
            moved = _rows_leaving(rows, labels) if mode == "gather" else 0
        else:  # the first round's proposals are what travels
            first = SelectionConfig(method=cfg.method, fraction=min(1.0, cfg.fraction * world))
            props = [rw[build_selector(first, W.SELECTION_SEED).select(
                grads[rw], labels[rw], torch.Generator().manual_seed(W.SOLVER_SEED + r)).indices]
                for r, rw in enumerate(rows)]
            moved = _rows_leaving(props, labels)
        want = round_bytes(mode, world, d, got["indices"].numel(), 3, moved, second_round=second)
        assert got["bytes_total"] == want["total"], name
        assert ranks[0][f"sel_{name}"]["bytes_total"] == ranks[1][f"sel_{name}"]["bytes_total"]


# ----------------------------------------------------------------------------- single-process pieces
def test_launch_info_reads_torchrun_and_rejects_half_launches() -> None:
    assert launch_info({}) == (0, 1, 0)
    full = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert launch_info(full) == (3, 4, 1)
    with pytest.raises(DistributedError, match="RANK is not set"):
        launch_info({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="MASTER_ADDR"):
        launch_info({k: v for k, v in full.items() if k != "MASTER_ADDR"})
    with pytest.raises(DistributedError, match="RANK=4"):
        launch_info({**full, "RANK": "4"})
    with pytest.raises(DistributedError, match="not an integer"):
        launch_info({**full, "WORLD_SIZE": "two"})


def test_without_torchrun_the_world_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = init_distributed("cpu")
    assert (env.rank, env.world_size, env.backend, env.is_main) == (0, 1, None, True)
    assert not dist.is_initialized()
    assert rank_device("cpu", 1, 2) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="CUDA is not available"):
            rank_device("cuda", 0, 2)


def test_a_world_of_one_keeps_the_whole_batch() -> None:
    idx, w = torch.arange(5), torch.rand(5)
    mine, weights, part = rank_part(idx, w, 0, 1)
    assert mine is idx and weights is w and part is None
    images, labels = W.images_labels()
    idx, w, _ = W.train_runs()["coreset"]
    want = list(iterate_batches(images, labels, idx, w, 16, torch.Generator().manual_seed(9)))
    got = list(iterate_batches(images, labels, idx, w, 16, torch.Generator().manual_seed(9), rank=0, world=1))
    for g, b in zip(got, want, strict=True):
        assert all(torch.equal(getattr(g, f), getattr(b, f)) for f in ("x", "y", "w", "idx"))
        assert g.part is None and g.norm is None and g.counted


def test_ranks_split_each_global_batch_and_its_augmentation() -> None:
    images, labels = W.images_labels()
    idx, w, _ = W.train_runs()["coreset"]
    want = list(iterate_batches(images, labels, idx, w, 16, torch.Generator().manual_seed(9), padding=2, flip=True))
    two = [list(iterate_batches(images, labels, idx, w, 16, torch.Generator().manual_seed(9), padding=2, flip=True,
                                rank=r, world=2)) for r in range(2)]
    for step, b in enumerate(want):
        for f in ("x", "y", "w", "idx"):
            assert torch.equal(torch.cat([getattr(two[r][step], f) for r in range(2)]), getattr(b, f))
        assert all(two[r][step].norm == b.w.sum() / 2 for r in range(2))


def _global_batches(idx: torch.Tensor, w: torch.Tensor, rank: int, world: int, batch: int, seed: int = 0
                    ) -> list[tuple[torch.Tensor, torch.Tensor, Part | None]]:
    """The trainer's batch plan: a CoresetBatches of split global_batch over a sampler of this rank."""
    sampler = CoresetSampler(idx, w, generator=torch.Generator().manual_seed(seed), rank=rank, world=world)
    batches = CoresetBatches(sampler, batch, split="global_batch")
    fetched = list(batches)
    assert [torch.tensor(f, dtype=torch.long).tolist() for f in fetched] == [p[0].tolist() for p in batches.pending]
    return list(batches.pending)


def test_ranks_split_each_global_batch_disjointly() -> None:
    idx, w = torch.arange(100, 141), torch.rand(41)
    per_rank = [_global_batches(idx, w, r, 3, 16) for r in range(3)]
    one = _global_batches(idx, w, 0, 1, 16)
    for step, (whole, whole_w, none) in enumerate(one):
        assert none is None
        parts = [p[step] for p in per_rank]
        assert all(part is not None for _, _, part in parts)
        real = torch.cat([i for i, _, part in parts if part is not None and not part.padded])
        assert real.tolist() == whole.tolist()
        assert all(part is not None and part.weight == whole_w.sum() for _, _, part in parts)
        assert sum(float(pw.sum()) for _, pw, _ in parts) == pytest.approx(float(whole_w.sum()))
    last = [p[-1][0] for p in per_rank]  # a global batch of 41 - 32 = 9 over 3 ranks: 3 each
    assert [i.numel() for i in last] == [3, 3, 3]
    tiny = [_global_batches(idx[:2], w[:2], r, 3, 16)[0] for r in range(3)]
    assert [p is not None and p.padded for _, _, p in tiny] == [True, False, False]
    assert float(tiny[0][1].sum()) == 0.0


@pytest.mark.parametrize(("padding", "flip"), [(2, True), (2, False), (0, True)])
def test_rank_augmentation_is_the_global_batch_augmentation(padding: int, flip: bool) -> None:
    images = torch.rand(41, 1, 6, 6)
    idx, w = torch.arange(41), torch.ones(41)
    one = [random_crop_flip(images[b.idx], padding, flip, g) for g in [torch.Generator().manual_seed(4)]
           for b in list(iterate_batches(images, w, idx, w, 32, g))]
    for world in (2, 3):
        per_rank = []
        for r in range(world):
            g = torch.Generator().manual_seed(4)
            per_rank.append([random_crop_flip(images[b.idx], padding, flip, g, b.part)
                             for b in list(iterate_batches(images, w, idx, w, 32, g, rank=r, world=world))])
        for step, whole in enumerate(one):
            assert torch.equal(torch.cat([p[step] for p in per_rank]), whole)
    tiny = list(iterate_batches(images, w, idx[:1], w[:1], 32, torch.Generator(), rank=0, world=2))[0]
    assert tiny.part is not None and tiny.part.padded and not tiny.counted  # a stand-in
    assert random_crop_flip(images[tiny.idx], padding, flip, torch.Generator(), tiny.part).shape == (1, 1, 6, 6)


@pytest.mark.parametrize("rule", ["batch", "epoch", "resample"])
def test_the_loader_of_two_ranks_is_the_loader_of_one_process(rule: str) -> None:
    """The trainer's path (CoresetLoader, split global_batch, a DataLoader over the in-memory source): two ranks'
    batches together are one process's, augmentation included, and their loss normalisers make DDP's average
    one process's weighted mean."""
    images, labels = W.images_labels()
    idx, w, _ = W.train_runs()["coreset"]

    def loader(rank: int, world: int) -> CoresetLoader:
        source = TensorSource(images, labels, padding=1, flip=True)
        return CoresetLoader(source, W.tiny_model(), "standard", method="full", batch_size=16, weight_rule=rule,
                             generator=torch.Generator().manual_seed(6), rank=rank, world=world, split="global_batch")

    one = loader(0, 1)
    want = [(b, one.loss_norm(b)) for b in one.batches_for(idx, w)]
    two = [loader(r, 2) for r in range(2)]
    got = [[(b, ld.loss_norm(b)) for b in ld.batches_for(idx, w)] for ld in two]
    assert len(want) == len(got[0]) == len(got[1]) == one.count_batches(41) == two[1].count_batches(41)
    for step, (b, norm) in enumerate(want):
        parts = [got[r][step] for r in range(2)]
        for f in ("x", "y", "w", "idx"):
            assert torch.equal(torch.cat([getattr(p, f) for p, _ in parts]), getattr(b, f))
        whole = b.w.sum() if norm is None else norm
        assert all(torch.allclose(torch.as_tensor(n) * 2, torch.as_tensor(whole)) for _, n in parts)


def test_seed_epoch_separates_ranks_and_epochs_and_leaves_one_process_alone() -> None:
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    World().seed_epoch(0, epoch=3)
    assert torch.equal(torch.rand(3), want)
    draws = {}
    for r, epoch in [(0, 0), (1, 0), (0, 1), (0, 0)]:
        World(r, 2, r, torch.device("cpu"), "gloo").seed_epoch(0, epoch)
        draws.setdefault((r, epoch), []).append(torch.rand(3))
    assert torch.equal(*draws[(0, 0)])  # the same (seed, epoch, rank): the same stream, as after a resume
    assert not torch.equal(draws[(0, 0)][0], draws[(1, 0)][0])
    assert not torch.equal(draws[(0, 0)][0], draws[(0, 1)][0])


def test_sync_bn_is_on_for_cuda_ranks_only() -> None:
    cpu2 = World(0, 2, 0, torch.device("cpu"), "gloo")
    cuda2 = World(0, 2, 0, torch.device("cuda", 0), "nccl")
    assert not use_sync_bn(None, World()) and not use_sync_bn(True, World())
    assert not use_sync_bn(None, cpu2) and use_sync_bn(None, cuda2) and not use_sync_bn(False, cuda2)
    with pytest.raises(DistributedError, match="sync_bn"):
        use_sync_bn(True, cpu2)
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    bn[1].running_mean.fill_(0.5)
    conv = convert_sync_bn(bn, cuda2)
    assert isinstance(conv[1], nn.SyncBatchNorm) and torch.equal(conv[1].running_mean, torch.full((2,), 0.5))
    assert convert_sync_bn(bn, cpu2) is bn


def test_reduce_and_owners_single_process() -> None:
    assert reduce_accuracies({"a": 0.75}, 8, World()) == {"a": 0.75}
    owners = class_owners(torch.tensor([100, 90, 10, 10, 10]), 2)
    assert owners.tolist() == [0, 1, 1, 1, 1]  # 100^2 alone outweighs the rest
    assert shard_range(10, 2, 3) == (6, 10) and shard_range(10, 0, 3) == (0, 3)


@pytest.mark.parametrize("mode", ["gather", "partition"])
def test_a_world_of_one_selects_exactly_like_the_selector(mode: str) -> None:
    grads, labels = W.grad_problem()
    cfg = SelectionConfig(method="gradmatch", fraction=0.2)
    sharded = ShardedSelector(build_selector(cfg, 0), World(), mode)
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(0))  # shard rows in any order
    ref = build_selector(cfg, 0).select(grads, labels, torch.Generator().manual_seed(1))
    for got in (sharded.select_shard(GradShard(grads[perm], labels[perm], perm), labels,
                                     torch.Generator().manual_seed(1)),
                sharded.select(grads, labels, torch.Generator().manual_seed(1))):
        assert torch.equal(got.indices, ref.indices) and torch.equal(got.weights, ref.weights)
        assert got.record["bytes_total"] == 0
        assert got.record["grad_error"] == approximation_error(grads, ref.indices, ref.weights)


class _Unweighted:
    """A gradient selector that takes no point weights."""

    name, needs_grads, subset, weight_rule = "mine", True, True, "batch"

    def select(self, grads: Any, labels: torch.Tensor, generator: torch.Generator, progress: Any = None) -> Any:
        raise AssertionError("not called")


def test_bad_modes_fail_before_any_communication() -> None:
    labels = torch.tensor([0, 1])
    craig = build_selector(SelectionConfig(method="craig"), 0)
    with pytest.raises(ValueError, match="selection.distributed"):
        ShardedSelector(craig, World(), "scatter")
    with pytest.raises(ValueError, match="gradient rows"):
        ShardedSelector(craig, World(), "gather").select(None, labels, torch.Generator())
    with pytest.raises(ValueError, match="point weights"):
        ShardedSelector(_Unweighted(), World(), "partition", second_round=True)
    with pytest.raises(ValueError, match="single examples"):
        ShardedSelector(build_selector(SelectionConfig(method="craig", batchwise=True), 0), World(), "partition",
                        second_round=True)
    ShardedSelector(_Unweighted(), World(), "gather", second_round=True)  # gather has no second round
    with pytest.raises(ValueError, match="mode must be"):
        round_bytes("ring", 2, 10, 5, 2, 0)


def test_distributed_config_fields_are_checked() -> None:
    from advcoreset.config import ConfigError
    from advcoreset.config_checks import load_config

    cfg = load_config(None, ["selection.distributed=partition", "selection.partition_rounds=2", "optim.sync_bn=false"])
    assert (cfg.selection.distributed, cfg.selection.partition_rounds, cfg.optim.sync_bn) == ("partition", 2, False)
    assert load_config(None, []).optim.sync_bn is None  # auto
    for bad, field in [("selection.distributed=scatter", "selection.distributed"),
                       ("selection.partition_rounds=3", "selection.partition_rounds"),
                       ("optim.sync_bn=maybe", "optim.sync_bn")]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [bad])


class _Counted:
    """A progress task that records its updates."""

    def __init__(self) -> None:
        self.updates: list[int] = []

    def update(self, n: int = 1, note: str = "") -> None:
        self.updates.append(n)

    def write(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_sharded_selection_reports_its_attack_pass_and_solver() -> None:
    images, labels = W.images_labels()
    model, attack = W.tiny_model(), _Counted()
    lo, hi = shard_range(W.N, 1, 2)
    times = {"attack": 0.0, "gradient": 0.0}
    grads = selection_gradients(model, W.objective(), TensorSource(images, labels), 20, rows=(lo, hi),
                                progress=lambda desc, total: attack, times=times)
    assert sum(attack.updates) == hi - lo == grads.shape[0] and len(attack.updates) == -(-(hi - lo) // 20)
    assert times["attack"] > 0 and times["gradient"] > 0
    whole = selection_gradients(model, W.objective(), TensorSource(images, labels), 20)
    assert torch.equal(grads, whole[lo:hi])  # the row range is those rows of the whole pass
    solver = _Counted()  # a world of one: the plain selector, one update per class
    sel = ShardedSelector(build_selector(SelectionConfig(method="craig", fraction=0.3), 0), World()).select_shard(
        GradShard(grads, labels[lo:hi], torch.arange(lo, hi)), labels, torch.Generator(), progress=solver)
    assert solver.updates == [1] * int(labels[lo:hi].unique().numel()) and sel.indices.numel() > 0


def test_a_sharded_selector_keeps_its_inner_share_and_a_pool_refuses_it() -> None:
    inner = build_selector(SelectionConfig(method="gradmatch", fraction=0.2), 0)
    sharded = ShardedSelector(inner, World(), "partition")
    assert sharded.fraction == 0.2 and fraction_of(sharded) == 0.2 and fraction_of(_Unweighted()) == 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = TensorSource(torch.rand(20, 1, 2, 2), torch.arange(20) % 2)
    warm = CoresetLoader(data, model, "pgd", method=sharded, warm_start="rs2", batch_size=4)
    assert warm.warm_draw is not None and warm.warm_draw.fraction == 0.2  # the wrapped selector's share
    with pytest.raises(ValueError, match="pool runs in one process"):
        CoresetLoader(data, model, "pgd", method=sharded, pool=2, batch_size=4)
    with pytest.raises(ValueError, match="pool runs in one process"):  # the round's own check, for select_coreset
        Pool(2.0).draw(torch.arange(20) % 2, 0, sharded)
