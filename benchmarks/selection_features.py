"""Which points should selection read gradients at? Issue 24's measurement before building a variant.

Today every selection round pays an attack pass over the whole training set (1 step by default) before
the solver runs. Two cheaper feature points could replace it:

- **clean**: the gradient at the clean image (``selection.attack_steps=0``): one forward pass;
- **cached**: the gradient at the perturbation the example got the last time it was trained (ATTA, Zheng et
  al., CVPR 2020: perturbations transfer across epochs): one forward pass, no attack.

At one point of a training run (Fashion-MNIST, all 60,000 images, small CNN, l_inf eps 0.1, PGD-7 AT, bf16
on CPUs that run it natively): ``--warm`` full-data epochs, then one more epoch whose PGD-7 perturbations are
kept (the cache, each one as old as it would be at a selection round right after that epoch). At that model
the script takes last-layer gradients at clean, cached, 1-step (today's default) and PGD-7 points, runs
GradMatch and CRAIG at ``--fraction`` on each, and scores every chosen set against the PGD-7 gradients (the
points training actually attacks): the relative error ||sum g - sum w g|| / ||sum g|| of the PGD-7 gradients
(ACS's convergence quantity), and the overlap (Jaccard) with the set chosen on PGD-7 gradients. Random
subsets (5 draws) give the floor. Seconds of each feature pass are reported beside.

    python benchmarks/selection_features.py [--n 60000] [--warm 1] [--fraction 0.3]
        # -> benchmarks/results/selection_features/{results.json,table.md}

Run it alone on the machine: the seconds are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advcoreset.config_checks import load_config
from advcoreset.data import load_dataset
from advcoreset.models import create_model
from advcoreset.models.adapter import last_layer
from advcoreset.objectives import PGDAT, Objective
from advcoreset.precision import cpu_bf16_native, resolve_precision
from advcoreset.selection import approximation_error, build_selector
from advcoreset.selection.gradients import last_layer_grads

EPS, ALPHA, STEPS, BATCH, LR = 0.1, 0.025, 7, 128, 0.1


class GivenPoints(Objective):
    """PGD-AT's loss at points handed in from outside (the cache): ``attack`` returns the next batch's."""

    name = "given"

    def __init__(self, points: Tensor) -> None:
        super().__init__()
        self.points_all, self.at = points, 0

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = self.points_all[self.at:self.at + x.shape[0]].to(x.dtype).contiguous(memory_format=_layout(x))
        self.at += x.shape[0]
        return out


def _layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def batches(images: Tensor, labels: Tensor, order: Tensor, fmt: torch.memory_format) -> Iterator[tuple[Tensor, ...]]:
    """(indices (B,), x (B, C, H, W) float in [0, 1], y (B,)) in ``order``."""
    for s in range(0, order.numel(), BATCH):
        idx = order[s:s + BATCH]
        yield idx, (images[idx].float() / 255).contiguous(memory_format=fmt), labels[idx]


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor, gen: torch.Generator,
                autocast: Callable[[], AbstractContextManager[Any]], fmt: torch.memory_format,
                keep: Tensor | None = None) -> None:
    """One full-data PGD-7 epoch in random order; ``keep`` (N, C, H, W) receives every example's
    adversarial image as trained on."""
    pgd = PGDAT(EPS, ALPHA, STEPS, "linf")
    model.train()
    for idx, x, y in batches(images, labels, torch.randperm(labels.numel(), generator=gen), fmt):
        with autocast():
            x_adv = pgd.attack(model, x, y)
            loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if keep is not None:
            keep[idx] = x_adv.detach().float().contiguous()


def features(model: nn.Module, obj: Objective, images: Tensor, labels: Tensor,
             autocast: Callable[[], AbstractContextManager[Any]], fmt: torch.memory_format) -> tuple[Tensor, float]:
    """(N, D) last-layer gradients of ``obj`` at its points for every example in index order, and seconds."""
    layer = last_layer(model, (images[:2].float() / 255).contiguous(memory_format=fmt))
    t0 = time.perf_counter()
    out = [last_layer_grads(model, obj, x, y, "last_layer", layer)
           for _, x, y in _autocast_each(batches(images, labels, torch.arange(labels.numel()), fmt), autocast)]
    return torch.cat(out), time.perf_counter() - t0


def _autocast_each(it: Iterator[tuple[Tensor, ...]],
                   autocast: Callable[[], AbstractContextManager[Any]]) -> Iterator[tuple[Tensor, ...]]:
    for item in it:
        with autocast():
            yield item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="training images (default all 60,000)")
    ap.add_argument("--warm", type=int, default=1, help="full-data epochs before the cached epoch")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--amp", default="auto",
                    help="bf16 autocast: auto (on where the CPU runs it natively), true, false")
    ap.add_argument("--out", default="benchmarks/results/selection_features")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", None, train=True)
    images, labels = data.images, data.labels
    if args.n:
        images, labels = images[:args.n], labels[:args.n]
    amp = {"true": True, "false": False}.get(args.amp, "auto")
    prec = resolve_precision(True if amp == "auto" and cpu_bf16_native() else amp, torch.device("cpu"))
    fmt = torch.channels_last if prec.dtype is not None else torch.contiguous_format
    autocast = prec.autocast
    model = create_model("small_cnn", images.shape[1], 10, images.shape[2]).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.warm):
        train_epoch(model, opt, images, labels, gen, autocast, fmt)
    cache = torch.empty(images.shape, dtype=torch.float32)
    t0 = time.perf_counter()
    train_epoch(model, opt, images, labels, gen, autocast, fmt, keep=cache)
    epoch_s = time.perf_counter() - t0
    model.eval()
    kinds: dict[str, Objective] = {"clean": PGDAT(EPS, ALPHA, 0, "linf"), "cached": GivenPoints(cache),
                                   "1-step": PGDAT(EPS, 2.5 * EPS, 1, "linf"),
                                   "PGD-7": PGDAT(EPS, ALPHA, STEPS, "linf")}
    grads, secs = {}, {}
    for kind, obj in kinds.items():
        grads[kind], secs[kind] = features(model, obj, images, labels, autocast, fmt)
        print(f"{kind}: feature pass {secs[kind]:.1f} s", flush=True)
    report = score(grads, secs, labels, args.fraction, epoch_s, args, prec.name)
    write(report, Path(args.out))


def score(grads: dict[str, Tensor], secs: dict[str, float], labels: Tensor, fraction: float, epoch_s: float,
          args: argparse.Namespace, precision: str) -> dict[str, Any]:
    truth = grads["PGD-7"]
    rows = []
    for method in ("gradmatch", "craig"):
        sel_cfg = load_config(None, [f"selection.method={method}", f"selection.fraction={fraction}"]).selection
        chosen = {k: build_selector(sel_cfg, 0).select(g, labels, torch.Generator().manual_seed(0))
                  for k, g in grads.items()}
        ref = set(chosen["PGD-7"].indices.tolist())
        for kind, sel in chosen.items():
            mine = set(sel.indices.tolist())
            rows.append({"method": method, "features": kind, "feature_pass_s": secs[kind],
                         "error_vs_pgd7": approximation_error(truth, sel.indices, sel.weights),
                         "error_own": approximation_error(grads[kind], sel.indices, sel.weights),
                         "jaccard_vs_pgd7_set": len(mine & ref) / len(mine | ref)})
    rand = build_selector(load_config(None, ["selection.method=random", f"selection.fraction={fraction}"]).selection, 0)
    draws = [rand.select(None, labels, torch.Generator().manual_seed(d)) for d in range(5)]
    rows.append({"method": "random", "features": "-", "feature_pass_s": 0.0,
                 "error_vs_pgd7": sum(approximation_error(truth, s.indices, s.weights) for s in draws) / 5,
                 "error_own": None, "jaccard_vs_pgd7_set": None})
    return {"n": int(labels.numel()), "warm_epochs": args.warm, "fraction": fraction, "precision": precision,
            "threads": torch.get_num_threads(), "training_epoch_s": epoch_s, "rows": rows,
            "command": "python benchmarks/selection_features.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None)}


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Selection features: clean, cached, 1-step and PGD-7 points", "",
             f"`{report['command']}`: {report['n']} images, {report['warm_epochs']} warm epoch(s) then one PGD-7 "
             f"epoch whose perturbations are the cache, fraction {report['fraction']:g}, {report['precision']}, "
             f"{report['threads']} threads; that epoch took {report['training_epoch_s']:.1f} s.", "",
             "| method | features | feature pass s | error of PGD-7 gradients | error of own features | "
             "Jaccard with the PGD-7 set |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        own = "-" if r["error_own"] is None else f"{r['error_own']:.4f}"
        jac = "-" if r["jaccard_vs_pgd7_set"] is None else f"{r['jaccard_vs_pgd7_set']:.3f}"
        lines.append(f"| {r['method']} | {r['features']} | {r['feature_pass_s']:.1f} | {r['error_vs_pgd7']:.4f} | "
                     f"{own} | {jac} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
