"""Evaluation time before and after the bit-exact pooling kernel, with the robust masks compared.

    python benchmarks/eval_speed.py --run RUN_FOLDER [--pgd-n 2000] [--aa-n 100] [--out benchmarks/results/eval_speed]

The model of ``RUN_FOLDER`` (its ``last.pt``; without ``--run``, a small CNN trained here for one PGD-AT
epoch on 10,000 Fashion-MNIST images) is evaluated twice in fp32 in one process, alternating: "before" with
``nn.MaxPool2d`` (the contiguous CPU kernel the library used until this change) and "after" with the
library's ``MaxPool2x2``. Each evaluation is PGD-20 (step 0.01, 1 restart) on the first ``--pgd-n`` test
images and standard AutoAttack on the first ``--aa-n`` (every attack at its standard budget). The per-example
robust masks of both must be identical; the seconds of each part and the speed-up are written to
``eval_speed.json`` / ``eval_speed.md``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcoreset.config_checks import load_config
from advcoreset.data import prepare_data
from advcoreset.evaluation import pgd_robust_mask
from advcoreset.evaluation.autoattack import autoattack_robust_mask
from advcoreset.evaluation.run import load_run_model
from advcoreset.models.base import MaxPool2x2
from advcoreset.training import Trainer


def with_plain_pool(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``MaxPool2x2`` layers are plain ``nn.MaxPool2d(2)``."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(module, name, nn.MaxPool2d(2))
    return model


def _model_and_test(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    if args.run:
        model, cfg = load_run_model(args.run, "last.pt", "cpu")
        test = prepare_data(cfg.data, cfg.seed).test
        return model, test.images, test.labels, f"the model of {args.run}"
    cfg = load_config(None, ["data.train_subset=10000", "data.test_subset=null", "optim.epochs=1", "amp=false",
                             "selection.method=full", "progress=none", "out_dir=/tmp/eval_speed_model"])
    t = Trainer(cfg)
    n = t.labels.numel()
    t.train_epoch(torch.arange(n), torch.ones(n))
    images, labels = t.run_data.test
    return t.model.eval(), images, labels, "a small CNN after one PGD-AT epoch on 10,000 images"


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace
              ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    pgd = pgd_robust_mask(model, images[:args.pgd_n], labels[:args.pgd_n], eps=args.eps, alpha=0.01, steps=20)
    t1 = time.perf_counter()
    aa, info = autoattack_robust_mask(model, images[:args.aa_n], labels[:args.aa_n], norm="linf", eps=args.eps)
    t2 = time.perf_counter()
    per_attack = {a["name"]: a["seconds"] for a in info["autoattack"]["attacks"]}
    return {"pgd": pgd, "autoattack": aa}, {"pgd20": t1 - t0, "autoattack": t2 - t1, **per_attack}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    after, images, labels, what = _model_and_test(args)
    before = with_plain_pool(after)
    masks: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(args.repeats):
        for name, model in (("before", before), ("after", after)) if r % 2 == 0 else (("after", after),
                                                                                      ("before", before)):
            m, s = _evaluate(model, images, labels, args)
            masks.setdefault(name, m)
            assert all(torch.equal(masks[name][k], m[k]) for k in m), "an evaluation is not repeatable"
            seconds[name].append(s)
    best = {k: {p: min(s[p] for s in v) for p in v[0]} for k, v in seconds.items()}
    identical = {k: bool(torch.equal(masks["before"][k], masks["after"][k])) for k in masks["before"]}
    total = {k: best[k]["pgd20"] + best[k]["autoattack"] for k in best}
    return {"model": what, "pgd_n": args.pgd_n, "aa_n": args.aa_n, "eps": args.eps, "repeats": args.repeats,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "seconds": seconds, "best": best,
            "masks_identical": identical, "robust": {k: float(v.float().mean()) for k, v in masks["after"].items()},
            "time_cut": 1 - total["after"] / total["before"],
            "speedup": {p: best["before"][p] / best["after"][p] for p in best["after"]}}


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"`python benchmarks/eval_speed.py` ({r['model']}; PGD-20 on {r['pgd_n']} and standard AutoAttack on "
             f"{r['aa_n']} test images, l_inf eps {r['eps']}, fp32, {r['threads']} threads, torch {r['torch']}, "
             f"fastest of {r['repeats']})", "",
             "| part | before s (nn.MaxPool2d) | after s (MaxPool2x2) | speed-up |", "|---|---|---|---|"]
    for p, sp in r["speedup"].items():
        lines.append(f"| {p} | {r['best']['before'][p]:.1f} | {r['best']['after'][p]:.1f} | {sp:.2f}x |")
    same = ", ".join(f"{k}: {'identical' if v else 'DIFFERENT'}" for k, v in r["masks_identical"].items())
    rob = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["robust"].items())
    lines += ["", f"Evaluation time cut: {100 * r['time_cut']:.0f}%. Per-example robust masks before and after: "
              f"{same} (robust accuracy {rob}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a finished run folder (default: train a small model here)")
    ap.add_argument("--pgd-n", type=int, default=2000)
    ap.add_argument("--aa-n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/eval_speed")
    args = ap.parse_args()
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "eval_speed.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
