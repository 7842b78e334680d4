"""Selection on real adversarial gradients (Fashion-MNIST, small CNN, l_inf PGD eps 0.1):

1. cost of one selection round (attack pass over the training set + solver) against one full-data
   adversarial training epoch (targets: round <= 1.5x epoch, solver <= 10% of the round);
2. the relative gradient approximation error ||sum g - sum w g|| / ||sum g|| of CRAIG, GradMatch and
   random subsets at the same per-class budget (target: CRAIG and GradMatch below random).

    python benchmarks/selection_overhead.py [--n 60000] [--warm-epochs 1] [--selection-steps 7]
                                            [--fractions 0.1,0.3,0.5] [--gradmatch-tol 1e-3]
                                            [--set selection.lam_relative=true --set selection.lam=1e-3]

The model is first trained for ``--warm-epochs`` full-data PGD-AT epochs (the warm start), whose last
epoch is the timed "full adversarial epoch". Writes benchmarks/results/selection_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from advcoreset.config_checks import load_config
from advcoreset.selection import approximation_error, build_selector
from advcoreset.training import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="training images (default all 60,000)")
    ap.add_argument("--warm-epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=7, help="training PGD steps")
    ap.add_argument("--selection-steps", type=int, default=None, help="selection attack steps (default: --steps)")
    ap.add_argument("--fractions", default="0.1,0.3,0.5")
    ap.add_argument("--random-draws", type=int, default=5)
    ap.add_argument("--gradmatch-tol", type=float, default=None, help="selection.tol (default: the config's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every selector, e.g. selection.lam_relative=true")
    ap.add_argument("--out", default="benchmarks/results/selection_overhead.json")
    args = ap.parse_args()
    # every setting the committed results depend on is pinned here, not left to the library's defaults
    over = ["data.augment=crop", f"objective.attack.steps={args.steps}", "progress=none", "optim.lr=0.2",
            "out_dir=/tmp/advcoreset-selection-bench", f"optim.epochs={max(args.warm_epochs, 1) + 1}",
            f"selection.attack_steps={args.selection_steps if args.selection_steps is not None else args.steps}"]
    if args.n:
        over.append(f"data.train_subset={args.n}")
    if args.gradmatch_tol is not None:
        over.append(f"selection.tol={args.gradmatch_tol}")
    over += args.set
    cfg = load_config(None, over)
    tr = Trainer(cfg)
    n = tr.labels.numel()
    idx, ones = torch.arange(n), torch.ones(n)
    epoch_s = 0.0
    for _ in range(args.warm_epochs):
        t0 = time.perf_counter()
        tr.train_epoch(idx, ones)
        epoch_s = time.perf_counter() - t0
        tr.state.epoch += 1

    # the attack pass of a selection round, exactly as the trainer does it
    tr.model.eval()
    t0 = time.perf_counter()
    grads = tr.loader.gradients()
    attack_s = time.perf_counter() - t0

    rows = []
    for frac in [float(f) for f in args.fractions.split(",")]:
        row: dict[str, float] = {"fraction": frac}
        for method in ("craig", "gradmatch", "random"):
            sel_cfg = load_config(None, over + [f"selection.method={method}", f"selection.fraction={frac}"])
            selector = build_selector(sel_cfg.selection, 0)
            draws = args.random_draws if method == "random" else 1
            errs, secs = [], []
            for d in range(draws):
                g = torch.Generator().manual_seed(d)
                t0 = time.perf_counter()
                sel = selector.select(grads, tr.labels, g)
                secs.append(time.perf_counter() - t0)
                errs.append(approximation_error(grads, sel.indices, sel.weights))
            if method == "gradmatch":  # share of the budget GradMatch filled at random after reaching tol
                cls = sel.stats["classes"].values()
                row["gradmatch_filled"] = sum(c["filled"] for c in cls) / max(sum(c["budget"] for c in cls), 1)
            row[f"{method}_error"] = sum(errs) / len(errs)
            row[f"{method}_solver_s"] = sum(secs) / len(secs)
        rows.append(row)

    print(f"Fashion-MNIST, {n} training images, small CNN, PGD-{args.steps} l_inf eps 0.1, "
          f"{torch.get_num_threads()} threads, gradients {tuple(grads.shape)}; one full adversarial epoch "
          f"{epoch_s:.1f} s, the selection attack pass {attack_s:.1f} s ({attack_s / epoch_s:.2f}x)")
    print()
    print(f"| fraction | CRAIG error | GradMatch error | random error (mean of {args.random_draws}) | "
          "CRAIG solver s | GradMatch solver s | round / epoch (CRAIG / GradMatch) | "
          "solver share of round (CRAIG / GradMatch) | GradMatch budget filled at random |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rc, rg = attack_s + r["craig_solver_s"], attack_s + r["gradmatch_solver_s"]
        print(f"| {r['fraction']:g} | {r['craig_error']:.4f} | {r['gradmatch_error']:.4f} | {r['random_error']:.4f} | "
              f"{r['craig_solver_s']:.1f} | {r['gradmatch_solver_s']:.1f} | "
              f"{rc / epoch_s:.2f}x / {rg / epoch_s:.2f}x | "
              f"{100 * r['craig_solver_s'] / rc:.1f}% / {100 * r['gradmatch_solver_s'] / rg:.1f}% | "
              f"{100 * r['gradmatch_filled']:.0f}% |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": n, "steps": args.steps, "gradmatch_tol": cfg.selection.tol,
                               "selection_steps": args.selection_steps or args.steps,
                               "epoch_s": epoch_s, "attack_pass_s": attack_s, "rows": rows,
                               "threads": torch.get_num_threads(), "overrides": args.set}, indent=2))


if __name__ == "__main__":
    main()
