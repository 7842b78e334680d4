"""A machine-speed probe for benchmarks spread over sessions or machines.

A shared machine's speed varies from day to day (by 2x or more on the 2-core CPU machines), so the training
times of two runs made on different days do not compare. The bench therefore times a fixed reference
workload right before each run starts (or resumes) and right after it ends, and stores the readings in
``RUN/probe.json``. A run's *cost* is its training time divided by the median reading; speed-ups are ratios
of costs, so a Full run timed on a slow day and a coreset run timed on a fast one still compare.

The workload is what a PGD-AT epoch is made of: PGD-7 training steps of the small CNN on a fixed (128, 1,
28, 28) batch, with the run's thread count. It takes about 10 s.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROBE_FILE = "probe.json"


def probe_seconds(threads: int | None = None, steps: int = 6, repeats: int = 3) -> float:
    """Median seconds of ``steps`` PGD-7 (l_inf eps 0.1) training steps of the small CNN on a fixed random
    (128, 1, 28, 28) batch, over ``repeats`` timings after one warm-up step; ``threads`` torch threads."""
    import torch
    from torch import nn

    from advcoreset.attacks.lp import pgd
    from advcoreset.models import create_model

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
        torch.manual_seed(0)
        model = create_model("small_cnn", 1, 10, 28)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            model.eval()
            x_adv = pgd(model, x, y, eps=0.1, alpha=0.025, steps=7)
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        readings = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(steps):
                step()
            readings.append(time.perf_counter() - t)
        return statistics.median(readings)
    finally:
        torch.set_num_threads(before)


def record_probe(folder: Path, when: str, threads: int | None = None) -> float:
    """Time the probe and append ``{"when", "at", "seconds"}`` to ``folder/probe.json``; returns the seconds."""
    seconds = probe_seconds(threads)
    path = folder / PROBE_FILE
    readings = read_probes(folder)
    readings.append({"when": when, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "seconds": seconds})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(readings, indent=1))
    tmp.replace(path)
    return seconds


def read_probes(folder: Path) -> list[dict[str, Any]]:
    """The readings in ``folder/probe.json`` (empty when there is none or it is not a list of readings)."""
    path = folder / PROBE_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in data if isinstance(r, dict) and isinstance(r.get("seconds"), (int, float))] \
        if isinstance(data, list) else []


def probe_median(folder: Path) -> float | None:
    """The median probe seconds of the run in ``folder``; None without readings."""
    secs = [float(r["seconds"]) for r in read_probes(folder) if r["seconds"] > 0]
    return statistics.median(secs) if secs else None
