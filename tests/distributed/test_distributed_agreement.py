"""torchrun ranks that were given different runs fail together at start with one line, instead of hanging
in a collective the others never reach (issue 26's hang)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

WORKER = """
import os, sys
from advcoreset.cli import main
rank = int(os.environ["RANK"])
fraction = "0.3" if rank == 0 else "0.5"  # rank 1 was launched with another config
sys.exit(main(["train", "--out", sys.argv[1], "--set", "data.name=digits", "--set", "data.test_subset=32",
               "--set", "model.width=8", "--set", "objective.attack.steps=1", "--set", "optim.epochs=2",
               "--set", "eval.pgd_steps=1", "--set", "progress=none", "--set", "selection.method=random",
               "--set", f"selection.fraction={fraction}", "--set", "threads=1"]))
"""


@pytest.mark.slow
def test_ranks_with_different_configs_fail_together_with_one_line(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "run")]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-rank job with different configs hung past 180 s")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert out.count("the ranks were given different runs: rank(s) [1] differ from rank 0") == 2, out[-3000:]
    assert time.perf_counter() - t0 < 120  # at start, not after a collective's timeout (600 s)
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing trained
