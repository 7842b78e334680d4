"""Distributed selection: communication volume per selection round from shapes, and (``--measure``) time.

Volume (default, computed, no training): for Fashion-MNIST / small CNN, CIFAR-10 / ResNet-18 and
ImageNet / ResNet-50, per world size, gradient features and mode (gather, partition, partition with a
second round), the payload bytes one round sends by ``advcoreset.selection.sharded.round_bytes``
(the accounting the library's own counters use; tests/distributed/test_distributed.py checks they agree), beside
one coreset epoch of DDP gradient all-reduce for scale. Writes benchmarks/results/distributed/volume.{json,md}.

    python benchmarks/distributed.py                      # volume tables only (seconds, no data)
    python benchmarks/distributed.py --measure [--n 6000] [--layouts 1x2,2x1] [--device cpu] [--model small_cnn]

``--measure`` times, on real Fashion-MNIST and an untrained model (the cost of a round does not depend
on the weights), one selection round per mode (attack, gradient, communication, solver; CRAIG at
fraction 0.3) and one coreset epoch, for each layout PROCESSESxTHREADS, each under
``torchrun --standalone``; it writes benchmarks/results/distributed/measure_<device>_<model>.json. Timings are
only meaningful on an otherwise idle machine; see docs/distributed.md for the planned runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path("benchmarks/results/distributed")
FRACTION = 0.3
SETUPS = [  # name, model, in channels, classes, input size, training images, global batch
    ("fashion-mnist / small_cnn", "small_cnn", 1, 10, 28, 60_000, 128),
    ("cifar10 / resnet18", "resnet18", 3, 10, 32, 50_000, 128),
    ("imagenet / resnet50", "resnet50", 3, 1000, 224, 1_281_167, 256),
]
MODES = [("gather", False), ("partition", False), ("partition", True)]


def _model_shape(name: str, cin: int, classes: int, size: int) -> tuple[int, int]:
    """(parameters, feature width of the final linear layer) of a registered model."""
    from advcoreset.models import create_model

    m = create_model(name, cin, classes, size)
    return sum(p.numel() for p in m.parameters()), m.head.in_features


def volume_rows(worlds: tuple[int, ...] = (2, 4, 8)) -> list[dict[str, Any]]:
    """One row per (setup, features, world, mode); classes taken as equal-sized (ImageNet's vary 732-1300
    per class, which changes k by well under 1%)."""
    from advcoreset.selection import class_budget
    from advcoreset.selection.sharded import round_bytes

    rows = []
    for name, model, cin, classes, size, n, batch in SETUPS:
        params, feat = _model_shape(model, cin, classes, size)
        n_c = n / classes
        k = classes * class_budget(FRACTION, round(n_c))
        for features, d in (("last_layer", classes + classes * feat), ("logits", classes)):
            for world in worlds:
                # one coreset epoch of DDP: a ring all-reduce of every parameter (float32) per global batch
                ddp = 2 * (world - 1) * params * 4 * math.ceil(k / batch)
                for mode, second in MODES:
                    if mode == "gather":
                        moved = n * (world - 1) / world
                    else:  # proposals: up to a whole class budget per rank, then the union moves
                        moved = classes * world * class_budget(min(1.0, FRACTION * world), round(n_c / world)) \
                            * (world - 1) / world if second else 0.0
                    b = round_bytes(mode, world, d, k, classes, moved, second_round=second)
                    rows.append({"setup": name, "features": features, "d": d, "n": n, "k": k, "world": world,
                                 "mode": mode + ("+round2" if second else ""),
                                 **{f"bytes_{x}": v for x, v in b.items()},
                                 "grad_bytes_per_rank": n / world * d * 4, "ddp_epoch_bytes": ddp})
    return rows


def _fmt(b: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def write_volume(rows: list[dict[str, Any]]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "volume.json").write_text(json.dumps({"fraction": FRACTION, "rows": rows}, indent=1))
    lines = [f"# Payload per selection round (fraction {FRACTION}, float32 gradients), computed from shapes",
             "", "Written by `python benchmarks/distributed.py`; `ddp epoch` is one coreset epoch of DDP "
             "gradient all-reduce, for scale; `grads/rank` is the gradient memory each rank holds.", "",
             "| setup | features | d | world | mode | gradients | indices+weights | total | grads/rank | ddp epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setup']} | {r['features']} | {r['d']:,} | {r['world']} | {r['mode']} | "
                     f"{_fmt(r['bytes_gradients'])} | {_fmt(r['bytes_indices_weights'])} | {_fmt(r['bytes_total'])} | "
                     f"{_fmt(r['grad_bytes_per_rank'])} | {_fmt(r['ddp_epoch_bytes'])} |")
    (OUT / "volume.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------------------- --measure
def worker(n: int, threads: int, device: str, model_name: str, dest: Path) -> None:
    """One rank of a measured layout (run under torchrun): a selection round per mode, then an epoch."""
    import torch

    from advcoreset import world as D
    from advcoreset.config import DataConfig, ObjectiveConfig, SelectionConfig
    from advcoreset.coreset.select import selection_gradients
    from advcoreset.data import TensorSource, iterate_batches, prepare_data
    from advcoreset.models import create_model
    from advcoreset.objectives import build_objective
    from advcoreset.selection import ShardedSelector, build_selector

    torch.set_num_threads(threads)
    env = D.init_distributed(device)
    data = prepare_data(DataConfig(train_subset=n), 0)
    images, labels = data.train.images.to(env.device), data.train.labels.to(env.device)
    torch.manual_seed(0)
    model = D.convert_sync_bn(create_model(model_name, 1, 10, 28), env).to(env.device)
    env.seed_epoch(0, epoch=0)
    obj = build_objective(ObjectiveConfig())
    res: dict[str, Any] = {"world_size": env.world_size, "threads": threads, "n": n, "device": str(env.device),
                           "model": model_name}
    t_grad = {"attack": 0.0, "gradient": 0.0}
    rows = D.shard_range(labels.numel(), env.rank, env.world_size)
    grads = selection_gradients(model, obj, TensorSource(images, labels, env.device), 128, rows=rows, times=t_grad)
    for mode, second in MODES:
        sharded = ShardedSelector(build_selector(SelectionConfig(method="craig", fraction=FRACTION), 0), env, mode,
                                  second_round=second, solver_seed=lambda r: 1)
        sel = sharded.select(grads, labels, torch.Generator().manual_seed(0))
        res[mode + ("+round2" if second else "")] = {**t_grad, **sel.record["time_selection_split"],
                                                     "bytes_total": sel.record["bytes_total"],
                                                     "grad_error": sel.record["grad_error"], "k": sel.indices.numel()}
    ddp, opt = D.wrap_ddp(model, env), torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t0 = time.perf_counter()
    for b in iterate_batches(images, labels, sel.indices.to(env.device), sel.weights.to(env.device), 128,
                             torch.Generator().manual_seed(0), rank=env.rank, world=env.world_size):
        out = obj.loss_at(ddp, b.x, obj.attack(model, b.x, b.y), b.y, b.w, norm=b.norm)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    res["coreset_epoch_s"] = time.perf_counter() - t0
    if env.is_main:
        dest.write_text(json.dumps(res, indent=1))
    D.shutdown(env)


def measure(n: int, layouts: list[tuple[int, int]], device: str, model: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for procs, threads in layouts:
        tmp = OUT / f".measure_{procs}x{threads}.json"
        # positional worker arguments: torchrun's own parser would claim options such as --n
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               __file__, "worker", str(n), str(threads), device, model, str(tmp)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        results.append({"layout": f"{procs}x{threads}", **json.loads(tmp.read_text())})
        tmp.unlink()
    path = OUT / f"measure_{device}_{model}.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        n, threads, device, model, out = sys.argv[2:7]
        worker(int(n), int(threads), device, model, Path(out))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="also time the layouts (needs an idle machine)")
    ap.add_argument("--n", type=int, default=6000, help="Fashion-MNIST training images for --measure")
    ap.add_argument("--layouts", default="1x2,2x1", help="PROCESSESxTHREADS, comma-separated")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    ap.add_argument("--model", default="small_cnn", help="model for --measure (Fashion-MNIST 28x28 inputs)")
    args = ap.parse_args()
    layouts = []
    for item in args.layouts.split(","):
        p, _, t = item.partition("x")
        if not (p.isdigit() and t.isdigit() and int(p) > 0 and int(t) > 0):
            sys.exit(f"--layouts: {item!r} is not PROCESSESxTHREADS (e.g. 2x1)")
        layouts.append((int(p), int(t)))
    write_volume(volume_rows())
    if args.measure:
        measure(args.n, layouts, args.device, args.model)


if __name__ == "__main__":
    main()
