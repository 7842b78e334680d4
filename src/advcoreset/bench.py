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
import queue
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from advcoreset.config import Config, ConfigError

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
    world_size: int = 1
    """Processes of the run: > 1 launches it under ``torchrun --standalone --nproc_per_node``."""

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
    w = spec.get("world_size", 1)
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise ConfigError(f"benchmark spec {path}: world_size must be an integer >= 1 (processes per run), got {w!r}")
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
                    run = Run(obj_name, method, frac, seed, cfg, Path(), int(spec.get("world_size", 1)))
                    run.folder = out / "runs" / run.key
                    cfg.update({"out_dir": str(run.folder), "progress": "line"})
                    if threads:
                        cfg["threads"] = threads
                    Config.from_dict(cfg).validate()  # fail before any run starts
                    runs.append(run)
    return runs


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


def _execute(run: Run, log_dir: Path, devices: queue.Queue[str] | None) -> tuple[Run, int, float]:
    run.folder.mkdir(parents=True, exist_ok=True)
    req = run.folder.parent / (run.folder.name + ".yaml")
    Config.from_dict(run.config).save(req)
    cmd = train_command(run, req, (run.folder / "last.pt").exists())
    t0 = time.perf_counter()
    log = log_dir / (run.key.replace("/", "__") + ".log")
    group = None if devices is None else devices.get()
    try:
        with open(log, "a") as f:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if group is not None:
                env["CUDA_VISIBLE_DEVICES"] = group
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        if devices is not None and group is not None:
            devices.put(group)
    return run, rc, time.perf_counter() - t0


def run_all(runs: list[Run], out: Path, jobs: int) -> list[str]:
    """Run what is not finished, ``jobs`` at a time (each with its own CUDA devices where there are
    some); returns the keys that failed."""
    todo = [r for r in runs if not (r.folder / "results.json").exists()]
    groups = device_groups(jobs, max([r.world_size for r in todo], default=1), _visible_cuda()) if todo else None
    devices: queue.Queue[str] | None = None
    if groups is not None:
        devices = queue.Queue()
        for g in groups:
            devices.put(g)
    print(f"bench: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run ({jobs} at a time)",
          flush=True)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i, (run, rc, secs) in enumerate(pool.map(lambda r: _execute(r, log_dir, devices), todo), 1):
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {log_dir})"
            print(f"[{i}/{len(todo)}] {run.key}: {status} in {secs:.0f}s", flush=True)
            if rc != 0:
                failed.append(run.key)
    return failed


def _read_run(run: Run) -> dict[str, Any] | None:
    res_path = run.folder / "results.json"
    if not res_path.exists():
        return None
    res = json.loads(res_path.read_text())
    sels = [json.loads(ln) for ln in (run.folder / "metrics.jsonl").read_text().splitlines()
            if ln.strip() and json.loads(ln).get("kind") == "selection"]
    pgd_key = next((k for k in res if k.startswith("test_pgd") and k.endswith("_acc")), None)
    times = res.get("times", {})
    return {
        "objective": run.objective, "method": run.method, "fraction": run.fraction, "seed": run.seed,
        "clean": res.get("test_clean_acc"), "pgd": res.get(pgd_key) if pgd_key else None, "pgd_key": pgd_key,
        "autoattack": res.get("test_autoattack_acc"),
        "ppgd": res.get("test_ppgd_acc"), "lpa": res.get("test_lpa_acc"),
        "time": res.get("time_train_total"),
        "selection_time": times.get("selection_attack", 0.0) + times.get("selection_solver", 0.0),
        "grad_error": statistics.fmean([s["grad_error"] for s in sels if s.get("grad_error") is not None])
        if any(s.get("grad_error") is not None for s in sels) else None,
        "autoattack_info": res.get("test_autoattack"),
    }


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def aggregate(runs: list[Run], spec: dict[str, Any]) -> dict[str, Any]:
    per_run = [r for r in (_read_run(run) for run in runs) if r is not None]
    groups: dict[tuple[str, str, float | None], list[dict[str, Any]]] = {}
    for r in per_run:
        groups.setdefault((r["objective"], r["method"], r["fraction"]), []).append(r)
    rows = []
    for (obj, method, frac), rs in groups.items():
        row: dict[str, Any] = {"objective": obj, "method": method, "fraction": frac, "seeds": len(rs)}
        for key in ("clean", "pgd", "autoattack", "ppgd", "lpa", "time", "selection_time", "grad_error"):
            row[key], row[key + "_std"] = _stat([r[key] for r in rs])
        rows.append(row)
    full_time = {r["objective"]: r["time"] for r in rows if r["method"] == "full"}
    ref = spec.get("reference")  # e.g. the PGD-AT full row, to place plain Fast-AT against it
    for row in rows:
        base = full_time.get(row["objective"])
        row["speedup"] = base / row["time"] if base and row["time"] else None
        if ref and ref in full_time and row["time"]:
            row["speedup_vs_reference"] = full_time[ref] / row["time"]
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (list(spec["objectives"]).index(r["objective"]), r["fraction"] or 0,
                             order[r["method"]]))
    aa = next((r["autoattack_info"] for r in per_run if r.get("autoattack_info")), None)
    return {"name": spec["name"], "rows": rows, "runs": per_run, "autoattack": aa, "reference": ref,
            "pgd_key": next((r["pgd_key"] for r in per_run if r["pgd_key"]), None)}


def check_targets(table: dict[str, Any], targets: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's ``targets`` checked against the aggregated rows: one dict per check with ``what``,
    ``value``, ``target`` and ``ok`` (None where a row it needs is missing).

    ``targets``: ``objective``, ``fraction``, ``min_speedup`` (every coreset method at that fraction vs
    Full), ``max_pgd_drop`` (PGD accuracy of Full minus the method's, as a fraction: 0.03 = 3 points) and
    ``beat_random`` (methods whose PGD accuracy must be >= Random's at the same fraction)."""
    obj, frac = targets["objective"], float(targets["fraction"])
    rows = {r["method"]: r for r in table["rows"] if r["objective"] == obj
            and (r["fraction"] is None or abs(r["fraction"] - frac) < 1e-9)}
    full, rnd = rows.get("full"), rows.get("random")
    checks: list[dict[str, Any]] = []
    for m, r in rows.items():
        if m == "full":
            continue
        if "min_speedup" in targets:
            sp = r.get("speedup")
            checks.append({"what": f"{m} speed-up vs full", "value": sp, "target": f">= {targets['min_speedup']}x",
                           "ok": None if sp is None else sp >= targets["min_speedup"]})
        if "max_pgd_drop" in targets and full is not None and r["pgd"] is not None and full["pgd"] is not None:
            drop = full["pgd"] - r["pgd"]
            checks.append({"what": f"{m} PGD drop vs full (points)", "value": 100 * drop,
                           "target": f"<= {100 * targets['max_pgd_drop']:g}", "ok": drop <= targets["max_pgd_drop"]})
    for m in targets.get("beat_random", []):
        r = rows.get(m)
        ok = None if r is None or rnd is None else r["pgd"] >= rnd["pgd"]
        checks.append({"what": f"{m} PGD minus random (points)",
                       "value": None if ok is None else 100 * (r["pgd"] - rnd["pgd"]), "target": ">= 0", "ok": ok})
    return checks


def _fmt(m: float | None, s: float | None, pct: bool = True) -> str:
    if m is None:
        return "-"
    return f"{100 * m:.1f} ± {100 * (s or 0):.1f}" if pct else f"{m:.0f} ± {s or 0:.0f}"


def markdown(table: dict[str, Any], spec: dict[str, Any]) -> str:
    pgd = (table.get("pgd_key") or "pgd").replace("test_", "").replace("_acc", "").upper()
    ref = table.get("reference")
    perceptual = any(r.get("ppgd") is not None for r in table["rows"])
    extra_head = " PPGD % | LPA % |" if perceptual else ""
    lines = [f"# Benchmark `{table['name']}`", "", spec.get("description", "").strip(), "",
             f"| objective | method | fraction | clean % | {pgd} % | AutoAttack % |{extra_head} train time s | "
             f"selection s | speed-up | grad error | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if perceptual else "")]
    for r in table["rows"]:
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        if ref and r["objective"] != ref and r["method"] == "full" and r.get("speedup_vs_reference"):
            sp += f" ({r['speedup_vs_reference']:.2f}x vs {ref})"
        ge = f"{r['grad_error']:.3f}" if r.get("grad_error") is not None else "-"
        frac = "-" if r["fraction"] is None else f"{r['fraction']:g}"
        cells = [r["objective"], r["method"], frac, _fmt(r["clean"], r["clean_std"]), _fmt(r["pgd"], r["pgd_std"]),
                 _fmt(r["autoattack"], r["autoattack_std"])]
        if perceptual:
            cells += [_fmt(r["ppgd"], r["ppgd_std"]), _fmt(r["lpa"], r["lpa_std"])]
        cells += [_fmt(r["time"], r["time_std"], pct=False), _fmt(r["selection_time"], None, pct=False), sp, ge,
                  str(r["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    aa = table.get("autoattack")
    if aa:
        budget_keys = ("iterations", "restarts", "n_targets", "queries")
        parts = ", ".join(f"{a.get('name')} ({', '.join(f'{k} {v}' for k, v in a.items() if k in budget_keys)})"
                          for a in aa.get("attacks", []))
        note = ("standard budgets, comparable to RobustBench" if aa.get("comparable_to_robustbench") else
                "reduced budgets for CPU, NOT the standard AutoAttack: its accuracy is an upper bound on what "
                "standard AutoAttack would report")
        lines += ["", f"AutoAttack: version `{aa.get('version')}`, {aa.get('norm')} eps {aa.get('eps')}, on the "
                  f"first {aa.get('n', '?')} test images: {parts} ({note})."]
    if spec.get("targets"):
        t = spec["targets"]
        lines += ["", f"Targets ({t['objective']}, fraction {t['fraction']}, seed means):", "",
                  "| check | value | target | met |", "|---|---|---|---|"]
        for c in check_targets(table, t):
            v = "-" if c["value"] is None else f"{c['value']:.2f}"
            met = "n/a" if c["ok"] is None else ("yes" if c["ok"] else "**no**")
            lines.append(f"| {c['what']} | {v} | {c['target']} | {met} |")
    lines += ["", "Mean ± standard deviation over seeds. Train time includes warm start and selection, excludes "
              "evaluation. Speed-up is against Full of the same objective. Grad error is the relative "
              "gradient approximation error ||sum g - sum w g|| / ||sum g|| of the coreset, averaged over "
              "selection rounds."]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if r["pgd"] is not None and r["time"] is not None]
    objs = list(dict.fromkeys(r["objective"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    markers = {None: "*", 0.1: "v", 0.3: "o", 0.5: "s"}
    paths = []
    for name, xkey, xlabel in (("robust_vs_time.png", "time", "training wall-clock (s)"),
                               ("robust_vs_speedup.png", "speedup", "speed-up vs Full (x)")):
        fig, axes = plt.subplots(1, max(len(objs), 1), figsize=(4.2 * max(len(objs), 1), 3.8), squeeze=False)
        for ax, obj in zip(axes[0], objs, strict=False):
            for r in (r for r in rows if r["objective"] == obj and r.get(xkey)):
                ax.errorbar(r[xkey], 100 * r["pgd"], yerr=100 * (r["pgd_std"] or 0),
                            xerr=(r["time_std"] or 0) if xkey == "time" else None, fmt=markers.get(r["fraction"], "o"),
                            color=colors[r["method"]], ms=8, capsize=2)
            ax.set_title(obj)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        pgd_name = (table.get("pgd_key") or "pgd").replace("test_", "").replace("_acc", "").upper()
        axes[0][0].set_ylabel(f"{pgd_name} accuracy (%)")
        handles = [plt.Line2D([], [], color=colors[m], marker="o", ls="", label=m) for m in methods]
        handles += [plt.Line2D([], [], color="grey", marker=mk, ls="", label="full" if f is None else f"fraction {f}")
                    for f, mk in markers.items()]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def report(runs: list[Run], spec: dict[str, Any], out: Path) -> dict[str, Any]:
    table = aggregate(runs, spec)
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
    table = report(runs, spec, out)
    sys.stdout.write(markdown(table, spec))
    print(f"\nwrote {out / 'table.md'}, {out / 'table.json'} and plots", flush=True)
    if failed:
        print(f"{len(failed)} runs failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

