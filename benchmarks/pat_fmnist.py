"""PAT (self-bound LPIPS, Fast-LPA) on a Fashion-MNIST subset: full data vs adversarial CRAIG / GradMatch
coresets. Prints clean, PPGD and LPA accuracy (self-bound LPIPS of each trained model, bound 0.5) on
test images, and the training wall-clock (selection included, evaluation excluded).

    python benchmarks/pat_fmnist.py [--train-subset 10000] [--n-eval 1000] [--set key=value ...]

Bound 0.5: on a standard small_cnn an l_inf-0.1 PGD perturbation has self-LPIPS ~0.5-0.6 (see
``advcoreset.attacks.perceptual``). Writes benchmarks/results/pat_fmnist/result.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from advcoreset.attacks.perceptual import perceptual_accuracy
from advcoreset.config import load_config
from advcoreset.training import Trainer

BOUND = 0.5
BASE = ["objective.name=pat", f"objective.pat.bound={BOUND}", "objective.pat.steps=10",
        "optim.epochs=8", "optim.weight_decay=0.0002", "selection.fraction=0.3", "selection.warm_epochs=2",
        "selection.interval=2", "eval.every=0", "progress=line"]
RUNS = {"full": ["selection.method=full"], "craig": ["selection.method=craig"],
        "gradmatch": ["selection.method=gradmatch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/pat_fmnist")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for name, sel in RUNS.items():
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(None, [*BASE, f"data.train_subset={args.train_subset}", *sel, *args.set,
                                 f"out_dir={run_dir}"])
        trainer = Trainer(cfg)
        res = trainer.run()
        test = trainer.data.test
        x, y = test.images[:args.n_eval], test.labels[:args.n_eval]
        acc = {a: perceptual_accuracy(trainer.model, x, y, attack=a, bound=BOUND, steps=10, batch_size=500)
               for a in ("ppgd", "lpa")}
        rows.append({"method": name, "clean_acc": res["test_clean_acc"], "ppgd_acc": acc["ppgd"],
                     "lpa_acc": acc["lpa"], "train_seconds": res["time_train_total"]})
    (out / "result.json").write_text(json.dumps({"bound": BOUND, "overrides": BASE + args.set, "rows": rows},
                                                indent=2))
    full = rows[0]["train_seconds"]
    print(f"| PAT, Fashion-MNIST {args.train_subset} | clean % | PPGD % | LPA % | train min | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {100 * r['clean_acc']:.1f} | {100 * r['ppgd_acc']:.1f} | "
              f"{100 * r['lpa_acc']:.1f} | {r['train_seconds'] / 60:.1f} | {full / r['train_seconds']:.2f}x |")


if __name__ == "__main__":
    main()
