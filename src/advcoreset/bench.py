"""``advcoreset bench``: the paper's table, measured. Full / Random / CRAIG / GradMatch (sample- and
batch-wise) for every objective and coreset fraction, over several seeds, with a Markdown table, JSON and
plots under ``benchmarks/results/<name>/``.

    advcoreset bench configs/bench_quick.yaml            # CPU, Fashion-MNIST subset, ~1 hour
    advcoreset bench configs/bench_full.yaml --jobs 1    # GPU, all data
    advcoreset bench configs/bench_quick.yaml --report   # only re-aggregate finished runs

Every run is an ordinary ``advcoreset train`` in its own folder, so a killed benchmark continues where it
stopped: finished runs (``results.json``) are kept, interrupted ones resume from their ``last.pt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from advcoreset.bench_evals import check_extra_evals, run_extra_evals
from advcoreset.bench_plots import plot
from advcoreset.bench_report import aggregate, check_targets, collect, markdown
from advcoreset.config import Config, ConfigError

__all__ = ["METHODS", "Run", "aggregate", "check_targets", "expand", "load_spec", "main", "markdown", "plot",
           "report", "run"]

METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full"},
    "random": {"method": "random"},
    "random_fixed": {"method": "random_fixed"},
    "craig": {"method": "craig", "batchwise": False},
    "gradmatch": {"method": "gradmatch", "batchwise": False},
    "craig_pb": {"method": "craig", "batchwise": True},
    "gradmatch_pb": {"method": "gradmatch", "batchwise": True},
}


@dataclass
class Run:
    objective: str
    method: str
    fraction: float | None
    seed: int
    config: dict[str, Any]
    folder: Path

    @property
    def key(self) -> str:
        frac = "" if self.fraction is None else f"-f{self.fraction:g}"
        return f"{self.objective}/{self.method}{frac}-s{self.seed}"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"benchmark spec {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in ("name", "base", "objectives", "methods", "seeds"):
        if key not in spec:
            raise ConfigError(f"benchmark spec {path} lacks {key!r}")
    methods = list(spec["methods"]) + [m for e in spec["objectives"].values() for m in e.get("methods", [])]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"benchmark spec {path}: unknown methods {unknown}; known: {sorted(METHODS)}")
    check_extra_evals(spec, path)
    return spec


def expand(spec: dict[str, Any], out: Path) -> list[Run]:
    """Every (objective, method, fraction, seed) run of the spec, each with its full config."""
    runs = []
    threads = spec.get("threads")
    for obj_name, entry in spec["objectives"].items():
        # an entry is a config mapping, optionally with its own "methods" / "fractions" lists and a
        # "coreset" mapping applied on top for every method but full (e.g. a longer warm start with fewer
        # epochs, the paper's schedule, against Full's own schedule)
        obj = {k: v for k, v in entry.items() if k not in ("methods", "fractions", "coreset")}
        coreset_cfg = entry.get("coreset", {})
        for method in entry.get("methods", spec["methods"]):
            fracs: list[float | None] = (
                [None] if method == "full" else list(entry.get("fractions", spec.get("fractions", [0.3]))))
            for frac in fracs:
                for seed in spec["seeds"]:
                    sel = dict(METHODS[method])
                    if frac is not None:
                        sel["fraction"] = frac
                    cfg = _merge(spec["base"], obj)
                    if method != "full":
                        cfg = _merge(cfg, coreset_cfg)
                    cfg = _merge(cfg, {"selection": sel, "seed": seed})
                    run = Run(obj_name, method, frac, seed, cfg, Path())
                    run.folder = out / "runs" / run.key
                    cfg.update({"out_dir": str(run.folder), "progress": "line"})
                    if threads:
                        cfg["threads"] = threads
                    Config.from_dict(cfg).validate()  # fail before any run starts
                    runs.append(run)
    return runs


def _execute(run: Run, log_dir: Path) -> tuple[Run, int, float]:
    run.folder.mkdir(parents=True, exist_ok=True)
    req = run.folder.parent / (run.folder.name + ".yaml")
    Config.from_dict(run.config).save(req)
    cmd = [sys.executable, "-m", "advcoreset.cli", "train", "--config", str(req), "--out", str(run.folder)]
    if (run.folder / "last.pt").exists():
        cmd.append("--resume")
    t0 = time.perf_counter()
    log = log_dir / (run.key.replace("/", "__") + ".log")
    with open(log, "a") as f:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return run, rc, time.perf_counter() - t0


def run_all(runs: list[Run], out: Path, jobs: int) -> list[str]:
    """Run what is not finished, ``jobs`` at a time; returns the keys that failed."""
    todo = [r for r in runs if not (r.folder / "results.json").exists()]
    print(f"bench: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run ({jobs} at a time)",
          flush=True)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, (run, rc, secs) in enumerate(pool.map(lambda r: _execute(r, log_dir), todo), 1):
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {log_dir})"
            print(f"[{i}/{len(todo)}] {run.key}: {status} in {secs:.0f}s", flush=True)
            if rc != 0:
                failed.append(run.key)
    return failed


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


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The bench command's arguments, for its own parser and for ``advcoreset bench``'s subparser."""
    ap.add_argument("spec", help="benchmark YAML (configs/bench_quick.yaml, configs/bench_full.yaml)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<name>)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the spec's, else 1)")
    ap.add_argument("--report", action="store_true", help="only aggregate finished runs")
    ap.add_argument("--only", default=None, help="comma-separated objectives to run (default all)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="advcoreset bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run (or with ``--report`` only aggregate) the benchmark ``args.spec``; 1 if any run failed."""
    spec = load_spec(args.spec)
    if args.only:
        keep = args.only.split(",")
        spec["objectives"] = {k: v for k, v in spec["objectives"].items() if k in keep}
    out = Path(args.out or Path("benchmarks/results") / spec["name"])
    out.mkdir(parents=True, exist_ok=True)
    runs = expand(spec, out)
    failed: list[str] = []
    if not args.report:
        failed = run_all(runs, out, args.jobs or int(spec.get("jobs", 1)))
        failed += run_extra_evals(runs, spec, out, args.jobs or int(spec.get("jobs", 1)))
    table = report(runs, spec, out)
    sys.stdout.write(markdown(table, spec))
    print(f"\nwrote {out / 'table.md'}, {out / 'table.json'} and plots", flush=True)
    if failed:
        print(f"{len(failed)} runs failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

