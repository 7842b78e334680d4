"""What `advcoreset train` with no arguments does on this machine: the README's first-screen figures.

    python benchmarks/default_run.py [--seeds 0 1 2] [--out benchmarks/results/default_run]

Runs the command exactly as a newcomer would (the library's defaults; a seed other than 0 is the one
override, ``--set seed=N``), one seed after the other, keeps each console output in ``train-s<seed>.log``
and run folder in ``run-s<seed>/``, and writes ``result.json``: per seed the clean and PGD-20 accuracy,
training time, the time spent selecting, the wall-clock of the command, and machine-speed probe readings
taken before and after (``advcoreset.bench.probe``), so a figure from a slow day can be told from one of a
fast day; then the range (min, max) of the accuracies over the seeds, which the README quotes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from advcoreset.bench.probe import probe_seconds


def run_seed(out: Path, seed: int) -> dict[str, Any]:
    """Train the default config with ``seed`` into ``out/run-s<seed>``; its measured row."""
    run_dir = out / f"run-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    probe_before = probe_seconds()
    t0 = time.perf_counter()
    extra = [] if seed == 0 else ["--set", f"seed={seed}"]
    with open(out / f"train-s{seed}.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "advcoreset", "train", "--out", str(run_dir), *extra],
                            stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    probe_after = probe_seconds()
    if rc != 0:
        sys.exit(f"advcoreset train failed (exit {rc}); see {out / f'train-s{seed}.log'}")
    res = json.loads((run_dir / "results.json").read_text())
    return {"seed": seed, "command": " ".join(["advcoreset train", *extra]), "clean_acc": res["test_clean_acc"],
            "pgd20_acc": res["test_pgd20_acc"], "n_test": res["test_n"], "train_seconds": res["time_train_total"],
            "selection_seconds": res["time_selection"], "final_eval_seconds": res["time_final_eval"],
            "wall_seconds": wall, "probe_seconds": [probe_before, probe_after]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/results/default_run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_seed(out, seed) for seed in args.seeds]
    summary = {key: [min(r[key] for r in rows), max(r[key] for r in rows)] for key in ("clean_acc", "pgd20_acc")}
    result = {"seeds": args.seeds, "range": summary, "runs": rows}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
