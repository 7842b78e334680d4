"""Epoch and selection throughput of two source trees of advcoreset, run alternately on one machine.

A refactor must leave training and selection as fast as they were (issue 27: within 3%). This runs the same
small `advcoreset train` (the command line, whose flags both trees share) from each tree's ``src`` in turn,
``--repeats`` times, and compares the fastest full-data epoch, coreset epoch and selection round of each:

    git worktree add /tmp/before <commit>
    python benchmarks/refactor_speed.py --before /tmp/before/src --after src \
        --out benchmarks/results/refactor_speed

Run it alone on the machine (anything else running skews one tree's repeats more than the other's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS = ["data.train_subset=6400", "data.test_subset=100", "data.val_size=0", "data.augment=none",
            "objective.attack.steps=7", "selection.method=gradmatch", "selection.fraction=0.3",
            "selection.warm_epochs=1", "selection.interval=1", "optim.epochs=3", "eval.every=0",
            "eval.pgd_steps=1", "eval.autoattack=false", "progress=none", "threads=2", "amp=false"]


def one_run(src: str, out: Path) -> dict[str, float]:
    """Train once with ``src`` first on the path; the fastest epoch of each phase and selection round (s)."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    cmd = [sys.executable, "-m", "advcoreset.cli", "train", "--out", str(out)]
    for s in SETTINGS:
        cmd += ["--set", s]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r.get("kind") == "epoch"]
    rounds = [r for r in lines if r.get("kind") == "selection"]
    return {"full_epoch": min(r["time_epoch_wall"] for r in epochs if r["phase"] == "warm"),
            "coreset_epoch": min(r["time_epoch_wall"] for r in epochs if r["phase"] == "coreset"),
            "selection": min(r["time_selection_attack"] + r["time_selection_solver"] for r in rounds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the src folder of the tree before the change")
    ap.add_argument("--after", required=True, help="the src folder of the tree after it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/refactor_speed")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in ("before", "after"):
                runs[name].append(one_run(getattr(args, name), Path(tmp) / f"{name}{i}"))
                print(name, i, runs[name][-1], flush=True)
    write(runs, args, Path(args.out))


def write(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace, out: Path) -> None:
    best = {n: {k: min(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    report: dict[str, Any] = {"settings": SETTINGS, "repeats": args.repeats, "runs": runs, "best": best,
                              "ratio_after_over_before": {k: best["after"][k] / best["before"][k]
                                                          for k in best["before"]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Throughput before and after a refactor", "",
             f"`python benchmarks/refactor_speed.py --before {args.before} --after {args.after}`, fastest of "
             f"{args.repeats} alternating runs each (fp32, 6,400 images, PGD-7, GradMatch 0.3).", "",
             "| part | before s | after s | after / before |", "|---|---|---|---|"]
    for k, v in report["ratio_after_over_before"].items():
        lines.append(f"| {k.replace('_', ' ')} | {best['before'][k]:.2f} | {best['after'][k]:.2f} | {v:.3f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
