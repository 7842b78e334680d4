"""The ``advcoreset bench`` command: a spec expanded into runs (``expand``), each an ``advcoreset train``
child in its own folder, run a few at a time and resumed (``run_all``), then reported (``report``).
``USAGE`` is the command's help."""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advcoreset.bench.evals import applies, run_extra_evals, without_checkpoint
from advcoreset.bench.plots import plot
from advcoreset.bench.probe import record_probe
from advcoreset.bench.report import aggregate, check_targets, collect, is_recorded, markdown, recorded
from advcoreset.bench.spec import ENTRY_KEYS, METHODS, SpecError, entry_seeds, load_spec
from advcoreset.config import Config, ConfigError
from advcoreset.config_checks import validate
from advcoreset.progress import make_progress
from advcoreset.training.run_folder import PARENT_ENV, check_writable, run_lock

__all__ = ["METHODS", "USAGE", "Run", "aggregate", "check_targets", "expand", "load_spec", "main", "markdown",
           "plot", "report", "run"]

USAGE = """``advcoreset bench``: the paper's table, measured. Full / Random / CRAIG / GradMatch (sample- and
batch-wise) for every objective and coreset fraction, over several seeds, with a Markdown table, JSON and
plots under ``benchmarks/results/<name>/``.

    advcoreset bench configs/bench/quick.yaml            # CPU, Fashion-MNIST subset, ~1 hour
    advcoreset bench configs/bench/full.yaml --jobs 1    # GPU, all data
    advcoreset bench configs/bench/quick.yaml --report   # only re-aggregate finished runs

Every run is an ordinary ``advcoreset train`` in its own folder, so a killed benchmark continues where it
stopped: finished runs (``results.json``) are kept, interrupted ones resume from their ``last.pt``. A run
recorded in the results folder's ``table.json`` counts as finished even without its folder (a committed study
in a fresh checkout); to run one again, remove its folder and ``table.json`` (rebuilt from the run folders).
Such a checkout has the records but not the checkpoints, so an extra evaluation added later cannot run:
``--retrain`` trains those runs again first (old folders kept under ``replaced/``).
"""


@dataclass
class Run:
    objective: str
    method: str
    fraction: float | None
    seed: int
    config: dict[str, Any]
    folder: Path
    world_size: int = 1
    """Processes of the run: > 1 launches it under ``torchrun --standalone --nproc_per_node``."""
    label: str | None = None
    """The objective its table row shows (the spec entry's ``label``; default the entry's name)."""
    budget: float | None = None
    """The budget its row is compared at, in full-data PGD-7 epochs (the spec entry's ``budget``)."""

    @property
    def key(self) -> str:
        frac = "" if self.fraction is None else f"-f{self.fraction:g}"
        return f"{self.objective}/{self.method}{frac}-s{self.seed}"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def expand(spec: dict[str, Any], out: Path) -> list[Run]:
    """Every (objective, method, fraction, seed) run of the spec, each with its full config; seed-major."""
    runs = []
    threads = spec.get("threads")
    for obj_name, entry in spec["objectives"].items():
        # an entry is a config mapping, optionally with its own "methods" / "fractions" lists and a
        # "coreset" mapping applied on top for every method but full (e.g. a longer warm start with fewer
        # epochs, the paper's schedule, against Full's own schedule), and its own "seeds" (a screening's
        # best rows confirmed at more seeds, in the same study)
        obj = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
        coreset_cfg = entry.get("coreset", {})
        for method in entry.get("methods", spec["methods"]):
            fracs: list[float | None] = (
                [None] if method == "full" else list(entry.get("fractions", spec.get("fractions", [0.3]))))
            for frac in fracs:
                for seed in entry_seeds(spec, entry, method):
                    sel = dict(METHODS[method])
                    if frac is not None:
                        sel["fraction"] = frac
                    cfg = _merge(spec["base"], obj)
                    if method != "full":
                        cfg = _merge(cfg, coreset_cfg)
                    cfg = _merge(cfg, {"selection": sel, "seed": seed})
                    run = Run(obj_name, method, frac, seed, cfg, Path(), int(spec.get("world_size", 1)),
                              entry.get("label"), entry.get("budget"))
                    run.folder = out / "runs" / run.key
                    cfg.update({"out_dir": str(run.folder), "progress": "line"})
                    if threads:
                        cfg["threads"] = threads
                    try:
                        c = validate(Config.from_dict(cfg))  # fail before any run starts
                    except ConfigError as e:
                        raise SpecError(f"benchmark spec, objective {obj_name!r}, method {method!r}: {e}") from None
                    if method != "full" and c.selection.warm_epochs >= c.optim.epochs:  # a row labelled wrongly
                        raise SpecError(f"benchmark spec, objective {obj_name!r}, method {method!r}: "
                                        f"selection.warm_epochs {c.selection.warm_epochs} >= optim.epochs "
                                        f"{c.optim.epochs}, so no coreset would ever be chosen; lower the warm start")
                    runs.append(run)
    # seed-major order: each seed's whole comparison (Full and every coreset) finishes before the next seed
    # starts, so a study spread over sessions has complete, same-machine comparisons as it goes
    return sorted(runs, key=lambda r: r.seed)


def train_command(run: Run, config_path: Path, resume: bool) -> list[str]:
    """The command line of one run: ``advcoreset train``, under torchrun when the run has several processes."""
    launch = [sys.executable, "-m", "advcoreset.cli"] if run.world_size == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.world_size}",
        "-m", "advcoreset"]
    return [*launch, "train", "--config", str(config_path), "--out", str(run.folder)] + (["--resume"] if resume else [])


def device_groups(jobs: int, world_size: int, visible: list[str]) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` values giving each of ``jobs`` concurrent runs its own ``world_size`` of the
    ``visible`` CUDA devices; None without CUDA devices (CPU runs share the machine)."""
    if not visible:
        return None
    if jobs * world_size > len(visible):
        raise ConfigError(f"bench --jobs {jobs} with world_size {world_size} needs {jobs * world_size} CUDA "
                          f"devices, {len(visible)} are visible; lower --jobs")
    return [",".join(visible[j * world_size:(j + 1) * world_size]) for j in range(jobs)]


def _visible_cuda() -> list[str]:
    import torch

    n = torch.cuda.device_count()
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [d.strip() for d in named.split(",") if d.strip()][:n] if named else [str(i) for i in range(n)]


def _execute(run: Run, log_dir: Path, devices: queue.Queue[str] | None,
             probe: bool = False) -> tuple[Run, int, float]:
    run.folder.mkdir(parents=True, exist_ok=True)
    req = run.folder.parent / (run.folder.name + ".yaml")
    Config.from_dict(run.config).save(req)
    resume = (run.folder / "last.pt").exists()
    cmd = train_command(run, req, resume)
    if probe:  # the machine's speed as this run starts (advcoreset.bench.probe)
        record_probe(run.folder, "resume" if resume else "start", run.config.get("threads"))
    t0 = time.perf_counter()
    log = log_dir / (run.key.replace("/", "__") + ".log")
    group = None if devices is None else devices.get()
    try:
        with open(log, "a") as f:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}  # dies with the bench
            if group is not None:
                env["CUDA_VISIBLE_DEVICES"] = group
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        if devices is not None and group is not None:
            devices.put(group)
    secs = time.perf_counter() - t0
    if probe and rc == 0:
        record_probe(run.folder, "end", run.config.get("threads"))
    return run, rc, secs


def run_all(runs: list[Run], out: Path, jobs: int, progress: str = "auto", probe: bool = False,
            spec: dict[str, Any] | None = None, chosen: Collection[str] | None = None,
            redo: Collection[str] = ()) -> list[str]:
    """Run what is not finished, ``jobs`` at a time (each with its own CUDA devices where there are
    some), each followed by the ``spec``'s extra evaluations and a fresh table of what has finished (all of
    ``runs``); returns the keys (and "key:eval") that failed. ``chosen``: the keys of the runs to run (None: all).
    ``redo``: keys of runs to train although ``table.json`` records them (:func:`retrain`'s; the old record
    stays in the table until the new run lands).
    ``progress``: auto, bar, line or none (``advcoreset.progress``): runs done / total and the time left.
    ``probe``: time the machine-speed probe before and after each run's training."""
    # finished: a run folder with results.json, or a record in the committed table.json (a study spread over
    # fresh checkouts keeps its records, not its run folders)
    previous = recorded(out)
    unfinished = [r for r in runs if not (r.folder / "results.json").exists()]
    elsewhere = [r for r in unfinished if is_recorded(r, previous) and r.key not in redo]
    recorded_keys = {r.key for r in elsewhere}
    todo = [r for r in unfinished if r.key not in recorded_keys and (chosen is None or r.key in chosen)]
    groups = device_groups(jobs, max([r.world_size for r in todo], default=1), _visible_cuda()) if todo else None
    devices: queue.Queue[str] | None = None
    if groups is not None:
        devices = queue.Queue()
        for g in groups:
            devices.put(g)
    left_out = len(unfinished) - len(elsewhere) - len(todo)
    print(f"bench: {len(runs)} runs, {len(runs) - len(unfinished) + len(elsewhere)} already done, {len(todo)} to run "
          f"({jobs} at a time)" + (f", {left_out} left for later (--only)" if left_out else ""), flush=True)
    if elsewhere:
        print(f"bench: {len(elsewhere)} done runs have only their record in {out / 'table.json'} (no run folder, so "
              f"no extra evaluations): {', '.join(r.key for r in elsewhere)}", flush=True)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    # runs take minutes: a line per finished run (interval 0), with the time left from the mean so far
    task = make_progress(progress, interval=0.0)("bench runs", len(todo))
    eval_failures: list[list[str]] = []
    rendering = threading.Lock()  # with jobs > 1, workers finish together: one table writer at a time

    def execute(r: Run) -> tuple[Run, int, float]:
        run, rc, secs = _execute(r, log_dir, devices, probe)
        if rc == 0 and spec is not None:  # in this worker, before its next run: nothing overlaps a timed run
            eval_failures.append(run_extra_evals([run], spec, out, 1))  # whole rows as runs land
            with rendering:
                report(runs, spec, out)
        return run, rc, secs

    with ThreadPoolExecutor(max_workers=jobs) as pool, task:
        for run, rc, secs in pool.map(execute, todo):
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {log_dir})"
            task.update(1, note=f"{run.key}: {status} in {secs:.0f}s")
            if rc != 0:
                task.write(f"bench: {run.key} {status}")  # stays on screen when a bar is drawn
                failed.append(run.key)
    return failed + [f for fs in eval_failures for f in fs]


def report(runs: list[Run], spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Aggregate the finished runs (from their folders, else from ``out/table.json``) and write
    ``table.json``, ``table.md`` and the plots under ``out``."""
    table = aggregate(collect(runs, out, spec.get("extra_evals")), spec, list(METHODS))
    table["spec"] = spec
    if spec.get("targets"):
        table["targets"] = check_targets(table, spec["targets"])
    (out / "table.json").write_text(json.dumps(table, indent=2, default=str))
    (out / "table.md").write_text(markdown(table, spec))
    if table["rows"]:
        plot(table, out)
    return table


def retrain(runs: list[Run], spec: dict[str, Any], out: Path) -> list[Run]:
    """Make the finished ``runs`` that miss an extra evaluation and have no checkpoint unfinished again: each
    folder (and log) moves to ``out/replaced/<key>`` (the old record is kept there, not lost), and a run that
    has only its record in ``out/table.json`` is named too; returns them, for
    ``run_all(redo=...)`` to train again and evaluate. ``out/table.json`` is not touched: until a new run lands
    its old record stays in the table (an interrupted retrain loses nothing)."""
    previous, evals = recorded(out), (spec.get("extra_evals") or {}).values()
    # a run with only its record (no folder: a retrain interrupted before its run landed) has no checkpoint either
    record_only = [r for r in runs if not (r.folder / "results.json").exists() and is_recorded(r, previous)
                   and any(applies(ev, r.key) for ev in evals)]
    stale = without_checkpoint(runs, spec) + record_only
    if not stale:
        return []
    for r in stale[:len(stale) - len(record_only)]:
        dest = out / "replaced" / r.key
        n = 1
        while dest.exists():  # retrained more than once: every old folder stays
            n += 1
            dest = out / "replaced" / f"{r.key}.{n}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        r.folder.replace(dest)
        log = out / "logs" / (r.key.replace("/", "__") + ".log")
        if log.exists():
            log.replace(dest / "train.log")
    print(f"bench: --retrain: {len(stale)} finished runs to train again for their extra evaluations "
          f"(old folders in {out / 'replaced'}): {', '.join(r.key for r in stale)}", flush=True)
    return stale


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The bench command's arguments, for its own parser and for ``advcoreset bench``'s subparser."""
    ap.add_argument("spec", help="benchmark YAML (configs/bench/quick.yaml, configs/bench/full.yaml)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<name>)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the spec's, else 1)")
    ap.add_argument("--report", action="store_true", help="only aggregate finished runs")
    ap.add_argument("--only", default=None, help="comma-separated objectives to run (default all)")
    ap.add_argument("--retrain", action="store_true",
                    help="train again the finished runs that an extra evaluation needs but whose last.pt is gone "
                         "(a fresh checkout keeps records, not checkpoints); their old folders move to OUT/replaced/")
    ap.add_argument("--progress", default="auto", choices=["auto", "bar", "line", "none"],
                    help="runs done / total and time left: a bar on a terminal (auto), a line per run, or none")


def main(argv: list[str] | None = None) -> int:
    """``advcoreset bench`` as a program of its own (``python -m advcoreset.bench SPEC``)."""
    ap = argparse.ArgumentParser(prog="advcoreset bench", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run (or with ``--report`` only aggregate) the benchmark ``args.spec``; 1 if any run failed."""
    spec = load_spec(args.spec)
    if args.jobs is not None and args.jobs < 1:
        raise SpecError(f"--jobs must be >= 1, got {args.jobs}")
    only = None  # the table always holds every finished run of the spec; --only says which to run
    if args.only is not None:
        only = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in only if k not in spec["objectives"]]
        if not only or unknown:
            raise SpecError(f"--only {args.only!r}: unknown objective(s) {unknown or only}; the spec {args.spec} "
                            f"has {list(spec['objectives'])}")
    out = Path(args.out or Path("benchmarks/results") / spec["name"])
    try:
        runs = expand(spec, out)
    except SpecError as e:
        raise SpecError(f"{args.spec}: {e}") from None
    check_writable(out, "benchmark results folder")
    failed: list[str] = []
    with run_lock(out):  # one bench per results folder; each run folder is locked by its own child
        if not args.report:
            chosen = [r for r in runs if only is None or r.objective in only]
            redo = {r.key for r in retrain(chosen, spec, out)} if getattr(args, "retrain", False) else set()
            jobs = args.jobs or int(spec.get("jobs", 1))
            keys = None if only is None else {r.key for r in chosen}
            failed = run_all(runs, out, jobs, getattr(args, "progress", "auto"), bool(spec.get("probe")), spec, keys,
                             redo)
            failed += run_extra_evals(chosen, spec, out, jobs)
        table = report(runs, spec, out)
    sys.stdout.write(markdown(table, spec))
    print(f"\nwrote {out / 'table.md'}, {out / 'table.json'} and plots", flush=True)
    if failed:
        print(f"{len(failed)} runs failed: {failed}", file=sys.stderr)
        return 1
    return 0
