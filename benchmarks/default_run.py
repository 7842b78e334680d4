"""What `advcoreset train` with no arguments does on this machine: the README's first-screen figures.

    python benchmarks/default_run.py [--out benchmarks/results/default_run]

Runs the command exactly as a newcomer would (a GradMatch adversarial coreset on all of Fashion-MNIST, the
library's defaults), keeps its console output in ``train.log`` and its run folder in ``run/``, and writes
``result.json``: clean and PGD-20 accuracy, training time, the time spent selecting, the coreset's gradient
error, the wall-clock of the whole command, and machine-speed probe readings taken before and after
(``advcoreset.bench.probe``), so a figure from a slow day can be told from one of a fast day.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from advcoreset.bench.probe import probe_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/default_run")
    args = ap.parse_args()
    out = Path(args.out)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    probe_before = probe_seconds()
    t0 = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "advcoreset", "train", "--out", str(run_dir)],
                            stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    probe_after = probe_seconds()
    if rc != 0:
        sys.exit(f"advcoreset train failed (exit {rc}); see {out / 'train.log'}")
    res = json.loads((run_dir / "results.json").read_text())
    row = {"command": "advcoreset train", "clean_acc": res["test_clean_acc"], "pgd20_acc": res["test_pgd20_acc"],
           "n_test": res["test_n"], "train_seconds": res["time_train_total"],
           "selection_seconds": res["time_selection"], "grad_error_mean": res["grad_error_mean"],
           "selection_rounds": res["selection_rounds_with_error"], "final_eval_seconds": res["time_final_eval"],
           "wall_seconds": wall, "probe_seconds": [probe_before, probe_after]}
    (out / "result.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
