"""Epoch and selection throughput of two source trees of advcoreset, run alternately on one machine, and the
tensor work each does.

A refactor must leave training and selection as fast as they were (issue 27: within 3%). This runs the same
small `advcoreset train` (the command line, whose flags both trees share) from each tree's ``src`` in turn,
``--repeats`` times, and compares the mean full-data epoch, coreset epoch and selection round of each (every
epoch of every repeat, so one slow epoch moves a mean by a fraction of itself, where it moved a minimum
whole), with the spread of the per-pair ratios. It then counts the aten operators each tree runs for one
small epoch under ``torch.profiler``: equal counts mean equal tensor work, so a gap in time is the machine's.

    git worktree add /tmp/before <commit>
    python benchmarks/refactor_speed.py --before /tmp/before/src --after src \
        --out benchmarks/results/refactor_speed

Run it alone on the machine (anything else running skews one tree's repeats more than the other's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS = ["data.train_subset=3200", "data.test_subset=100", "data.val_size=0", "data.augment=none",
            "objective.attack.steps=7", "selection.method=gradmatch", "selection.fraction=0.3",
            "selection.warm_epochs=2", "selection.interval=1", "optim.epochs=5", "eval.every=0",
            "eval.pgd_steps=1", "eval.autoattack=false", "progress=none", "threads=2", "amp=false"]
OPS_SETTINGS = [*SETTINGS, "data.train_subset=1280", "selection.warm_epochs=1", "optim.epochs=2"]
PARTS = ("full_epoch", "coreset_epoch", "selection")

PROFILE = """
import collections, json, sys, torch
from torch.profiler import profile, ProfilerActivity
from advcoreset.cli import main
with profile(activities=[ProfilerActivity.CPU]) as p:
    main(sys.argv[2:])
counts = collections.Counter({e.key: e.count for e in p.key_averages() if e.key.startswith("aten::")})
open(sys.argv[1], "w").write(json.dumps(counts))
"""


def cli_args(out: Path, settings: list[str]) -> list[str]:
    """``train --out out --set ...`` for ``settings``."""
    args = ["train", "--out", str(out)]
    for s in settings:
        args += ["--set", s]
    return args


def one_run(src: str, out: Path) -> dict[str, list[float]]:
    """Train once with ``src`` first on the path; every epoch of each phase and every selection round (s)."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    cmd = [sys.executable, "-m", "advcoreset.cli", *cli_args(out, SETTINGS)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r.get("kind") == "epoch"]
    rounds = [r for r in lines if r.get("kind") == "selection"]
    return {"full_epoch": [r["time_epoch_wall"] for r in epochs if r["phase"] == "warm"],
            "coreset_epoch": [r["time_epoch_wall"] for r in epochs if r["phase"] == "coreset"],
            "selection": [r["time_selection_attack"] + r["time_selection_solver"] for r in rounds]}


def op_counts(src: str, tmp: Path) -> dict[str, int]:
    """How many times each aten operator runs in a small two-epoch train (one warm, one coreset) of ``src``."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    out = tmp / "ops.json"
    subprocess.run([sys.executable, "-c", PROFILE, str(out), *cli_args(tmp / "run", OPS_SETTINGS)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return dict(json.loads(out.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the src folder of the tree before the change")
    ap.add_argument("--after", required=True, help="the src folder of the tree after it")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/refactor_speed")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in ("before", "after"):
                runs[name].append(one_run(getattr(args, name), Path(tmp) / f"{name}{i}"))
                print(name, i, runs[name][-1], flush=True)
        ops = {name: op_counts(getattr(args, name), Path(tmp) / f"ops_{name}") for name in ("before", "after")}
    write(runs, ops, args, Path(args.out))


def summary(runs: dict[str, list[dict[str, list[float]]]]) -> dict[str, Any]:
    """Per part: each tree's mean over every epoch/round of every repeat, after / before, and the range of
    the repeat-by-repeat ratios (repeat i of each tree ran back to back)."""
    mean = {n: {k: statistics.fmean(v for r in rs for v in r[k]) for k in PARTS} for n, rs in runs.items()}
    pairs = {k: [statistics.fmean(a[k]) / statistics.fmean(b[k]) for b, a in zip(runs["before"], runs["after"],
                                                                              strict=True)] for k in PARTS}
    return {"mean": mean, "ratio_after_over_before": {k: mean["after"][k] / mean["before"][k] for k in PARTS},
            "pair_ratio_range": {k: [min(v), max(v)] for k, v in pairs.items()}}


def write(runs: dict[str, list[dict[str, list[float]]]], ops: dict[str, dict[str, int]],
          args: argparse.Namespace, out: Path) -> None:
    s = summary(runs)
    diff = {k: [ops["before"].get(k, 0), ops["after"].get(k, 0)] for k in sorted(ops["before"].keys() | ops["after"])
            if ops["before"].get(k, 0) != ops["after"].get(k, 0)}
    total = {n: sum(c.values()) for n, c in ops.items()}
    report: dict[str, Any] = {"settings": SETTINGS, "repeats": args.repeats, "runs": runs, **s,
                              "aten_ops_total": total, "aten_ops_differing": diff}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Throughput before and after a refactor", "",
             f"`python benchmarks/refactor_speed.py --before {args.before} --after {args.after}`: mean of every "
             f"epoch / round over {args.repeats} alternating runs per tree (fp32, 3,200 images, PGD-7, GradMatch "
             "0.3, 2 warm epochs, 3 coreset epochs).", "",
             "| part | before s | after s | after / before | range of the per-repeat ratios |",
             "|---|---|---|---|---|"]
    for k in PARTS:
        lo, hi = s["pair_ratio_range"][k]
        lines.append(f"| {k.replace('_', ' ')} | {s['mean']['before'][k]:.2f} | {s['mean']['after'][k]:.2f} | "
                     f"{s['ratio_after_over_before'][k]:.3f} | {lo:.3f}-{hi:.3f} |")
    lines += ["", f"aten operators run in a 1,280-image warm epoch and coreset epoch: before {total['before']}, "
              f"after {total['after']}; operators whose count differs (before, after): "
              + (", ".join(f"{k} {v[0]}/{v[1]}" for k, v in diff.items()) or "none")]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
