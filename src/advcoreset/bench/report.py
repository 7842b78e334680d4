"""The tables of ``advcoreset bench``: per-run records, seed means, target checks and the Markdown table.

A run's record comes from its folder (``results.json``, ``metrics.jsonl`` and any ``eval_<name>.json``
of the spec's ``extra_evals``). Run folders are not committed, so where a folder is gone the record is
taken from the results folder's previous ``table.json``: ``advcoreset bench SPEC --report`` re-renders a
committed study without its runs. The plots are in ``advcoreset.bench.plots``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from advcoreset.bench.probe import probe_median

METRICS = ("clean", "pgd", "autoattack", "ppgd", "lpa", "time", "selection_time", "grad_error", "cost", "epochs",
           "cost_epochs")
# what a speed-up divides (spec key ``speedup_basis``): the times as measured, the times over each run's
# machine-speed probe, or the times over each run's own full-data epoch (see ``_speedups``)
BASES = {"time": ("time", "time"), "probe": ("cost", "probe-normalised time"),
         "epoch": ("epochs", "time in the run's own full-data epochs")}


def full_epoch_seconds(lines: list[dict[str, Any]]) -> float | None:
    """Mean wall seconds of a run's epochs on the whole training set (every epoch of Full, a coreset's warm
    epochs), from its ``metrics.jsonl`` records; None when it has none (a coreset without a warm start, or
    whose warm start trains on subsets: ``selection.warm_start: rs2``). A warm epoch counts only when it saw
    as many examples as a selection round's ``train_size``."""
    sizes = [s["train_size"] for s in lines if s.get("kind") == "selection" and s.get("train_size")]
    secs = [s["time_epoch_wall"] for s in lines if s.get("kind") == "epoch" and s.get("phase") in ("full", "warm")
            and s.get("time_epoch_wall") and (not sizes or s.get("n_train", sizes[0]) >= sizes[0])]
    return statistics.fmean(secs) if secs else None


class RunLike(Protocol):
    """What the report needs of a ``bench.Run``."""

    objective: str
    method: str
    fraction: float | None
    seed: int
    folder: Path


def record_key(objective: str, method: str, fraction: float | None, seed: int) -> tuple[Any, ...]:
    return objective, method, None if fraction is None else round(float(fraction), 9), int(seed)


def read_run(run: RunLike, extra_evals: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """One run's record from its folder; None while it has no ``results.json``.

    Accuracies are fractions in [0, 1], times seconds; ``evals`` maps each extra PGD evaluation's name to the
    PGD accuracy its ``eval_<name>.json`` holds (missing ones are left out). ``autoattack`` is the run's own
    AutoAttack, else its standard AutoAttack extra evaluation, else its fast one (``autoattack_info`` says
    which ran)."""
    res_path = run.folder / "results.json"
    if not res_path.exists():
        return None
    res = json.loads(res_path.read_text())
    lines = [json.loads(ln) for ln in (run.folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    errors = [s["grad_error"] for s in lines if s.get("kind") == "selection" and s.get("grad_error") is not None]
    pgd_key = next((k for k in res if k.startswith("test_pgd") and k.endswith("_acc")), None)
    times = res.get("times", {})
    probe = probe_median(run.folder)
    epoch_s = full_epoch_seconds(lines)
    total = res.get("time_train_total")
    evals, eval_seconds, aa = {}, {}, {}
    for name, entry in (extra_evals or {}).items():
        path = run.folder / f"eval_{name}.json"
        if path.exists():
            ev = json.loads(path.read_text())
            if "autoattack" in entry:  # fills the AutoAttack column, by version
                aa[entry["autoattack"]] = ev
            else:
                evals[name] = next((v for k, v in ev.items() if k.startswith("pgd") and k.endswith("_acc")), None)
            if isinstance(ev.get("seconds"), dict):
                eval_seconds[name] = sum(ev["seconds"].values())
    own = {"autoattack_acc": res.get("test_autoattack_acc"), "autoattack": res.get("test_autoattack")}
    found = next((e for e in (own, aa.get("standard"), aa.get("fast")) if e and e.get("autoattack_acc") is not None),
                 own)
    cfg = getattr(run, "config", None) or {}
    attack = (cfg.get("objective") or {}).get("attack") or {}
    return {
        "objective": run.objective, "method": run.method, "fraction": run.fraction, "seed": run.seed,
        "label": getattr(run, "label", None) or run.objective, "budget": getattr(run, "budget", None),
        # a PGD-7 run's full-data epochs are the unit of a budget study's cost
        "pgd7": (cfg.get("objective") or {}).get("name") == "pgd" and attack.get("steps") == 7,
        "clean": res.get("test_clean_acc"), "pgd": res.get(pgd_key) if pgd_key else None, "pgd_key": pgd_key,
        "autoattack": found.get("autoattack_acc"),
        "ppgd": res.get("test_ppgd_acc"), "lpa": res.get("test_lpa_acc"),
        "time": total,
        # training time in units of the machine-speed probe (advcoreset.bench.probe) and in units of the
        # run's own full-data epoch: both compare runs made at different machine speeds
        "probe": probe, "cost": total / probe if probe and total else None,
        "full_epoch": epoch_s, "epochs": total / epoch_s if epoch_s and total else None,
        "selection_time": times.get("selection_attack", 0.0) + times.get("selection_solver", 0.0),
        "grad_error": statistics.fmean(errors) if errors else None,
        "autoattack_info": found.get("autoattack"),
        "evals": evals,
        "time_parts": time_parts(res, eval_seconds),
    }


def time_parts(res: dict[str, Any], extra_seconds: dict[str, float]) -> dict[str, float]:
    """Where a run's time went, in seconds: ``train`` (epochs: attack, update, data), ``selection``,
    ``eval_pgd`` (the final clean + PGD pass), ``eval_autoattack`` and ``eval_<name>`` per extra evaluation.
    Runs written before evaluations recorded their seconds: AutoAttack from its attacks' seconds, the final
    PGD pass as the rest of the final evaluation, extra evaluations left out."""
    times = res.get("times", {})
    sel = times.get("selection_attack", 0.0) + times.get("selection_solver", 0.0)
    parts = {"train": (res.get("time_train_total") or 0.0) - sel, "selection": sel}
    recorded = res.get("test_seconds")
    aa = res.get("test_autoattack") or {}
    if isinstance(recorded, dict):
        parts["eval_pgd"] = recorded.get("clean", 0.0) + recorded.get("pgd", 0.0)
        if "autoattack" in recorded:
            parts["eval_autoattack"] = recorded["autoattack"]
    elif res.get("time_final_eval") is not None:
        aa_s = sum(a.get("seconds", 0.0) for a in aa.get("attacks", []))
        parts["eval_pgd"] = res["time_final_eval"] - aa_s
        if aa_s:
            parts["eval_autoattack"] = aa_s
    parts.update({f"eval_{k}": v for k, v in extra_seconds.items()})
    return parts


def recorded(out: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The run records of a committed study, ``out/table.json``, by (objective, method, fraction, seed)."""
    old = out / "table.json"
    if not old.is_file():
        return {}
    return {record_key(rec["objective"], rec["method"], rec["fraction"], rec["seed"]): rec
            for rec in json.loads(old.read_text()).get("runs", [])}


def is_recorded(run: RunLike, previous: dict[tuple[Any, ...], dict[str, Any]]) -> bool:
    """Whether ``run`` has a record in ``previous`` (from :func:`recorded`)."""
    return record_key(run.objective, run.method, run.fraction, run.seed) in previous


def collect(runs: Sequence[RunLike], out: Path, extra_evals: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The records of every finished run of ``runs``: from its folder where it has one, else from
    ``out/table.json`` (a committed study whose run folders are not in the repository)."""
    previous = recorded(out)
    records = []
    for run in runs:
        rec = read_run(run, extra_evals)
        if rec is None:
            rec = previous.get(record_key(run.objective, run.method, run.fraction, run.seed))
        if rec is not None:
            records.append(rec)
    return records


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _row_order(spec: dict[str, Any], method_order: Sequence[str]) -> Callable[[dict[str, Any]], tuple]:
    """Sort key for table rows: the spec's objective order, then Full, then the fractions in the spec's order
    (its first fraction is the headline; a fraction the spec does not list goes last, largest first), then
    the methods in ``method_order``."""
    objs = list(spec["objectives"])
    fracs = [float(f) for f in spec.get("fractions") or []]
    methods = {m: i for i, m in enumerate(method_order)}

    def key(row: dict[str, Any]) -> tuple[int, int, float, int]:
        frac = row["fraction"]
        listed = -1 if frac is None else (fracs.index(float(frac)) if float(frac) in fracs else len(fracs))
        return (objs.index(row["objective"]) if row["objective"] in objs else len(objs), listed,
                -(frac or 0.0), methods.get(row["method"], len(methods)))
    return key


def aggregate(per_run: list[dict[str, Any]], spec: dict[str, Any], method_order: Sequence[str]) -> dict[str, Any]:
    """Seed means and standard deviations per (objective, method, fraction), speed-ups against Full of the
    same objective (and against the spec's ``reference`` objective's Full), in the spec's order."""
    groups: dict[tuple[str, str, float | None], list[dict[str, Any]]] = {}
    for r in per_run:
        groups.setdefault((r["objective"], r["method"], r["fraction"]), []).append(r)
    names = pgd_eval_names(spec)
    set_costs(per_run)
    rows = []
    for (obj, method, frac), rs in groups.items():
        row: dict[str, Any] = {"objective": obj, "method": method, "fraction": frac, "seeds": len(rs),
                               "label": rs[0].get("label") or obj, "budget": rs[0].get("budget")}
        for key in METRICS:
            row[key], row[key + "_std"] = _stat([r[key] for r in rs])
        for name in names:
            row["eval_" + name], row["eval_" + name + "_std"] = _stat([r.get("evals", {}).get(name) for r in rs])
        versions = {(r.get("autoattack_info") or {}).get("version") for r in rs if r.get("autoattack") is not None}
        row["autoattack_version"] = (None if not versions else versions.pop() if len(versions) == 1 else "mixed")
        row["autoattack_seeds"] = sum(r.get("autoattack") is not None for r in rs)  # AutoAttack may lag the runs
        parts = [r.get("time_parts") or {} for r in rs]
        row["time_parts"] = {k: statistics.fmean(p[k] for p in parts if k in p)
                             for k in dict.fromkeys(k for p in parts for k in p)}
        rows.append(row)
    basis, cross = _speedups(rows, per_run, spec)
    rows.sort(key=_row_order(spec, method_order))
    infos: dict[Any, dict[str, Any]] = {}  # one description per AutoAttack version that ran, the standard one first
    for r in sorted(per_run, key=lambda r: (r.get("autoattack_info") or {}).get("version") != "standard"):
        if r.get("autoattack_info"):
            infos.setdefault(r["autoattack_info"].get("version"), r["autoattack_info"])
    aa = next(iter(infos.values()), None)
    return {"name": spec["name"], "rows": rows, "runs": per_run, "autoattack": aa,
            "autoattack_versions": list(infos.values()), "reference": spec.get("reference"),
            "speedup_basis": BASES[basis][1], "reference_speedup_basis": BASES[cross][1],
            "pgd_key": next((r["pgd_key"] for r in per_run if r["pgd_key"]), None)}


def pgd_eval_names(spec: dict[str, Any]) -> list[str]:
    """The spec's extra evaluations that are PGD attacks (each a table column; AutoAttack ones fill the
    AutoAttack column instead)."""
    return [n for n, e in (spec.get("extra_evals") or {}).items() if not (isinstance(e, dict) and "autoattack" in e)]


def set_costs(per_run: list[dict[str, Any]]) -> None:
    """Give every run its ``cost_epochs``: training time (selection included) in full-data PGD-7 epochs.

    A PGD-7 run with full-data epochs of its own (Full, a coreset's warm start) divides by them. Any other run
    (RS2 without a warm start, Fast-AT, N-FGSM) divides by the study's PGD-7 full-data epoch at its own
    machine speed: the median over PGD-7 runs of epoch seconds / probe, times the run's probe; without probes,
    the median PGD-7 epoch in seconds. None where the study has no PGD-7 full-data epoch."""
    ref = [r for r in per_run if r.get("pgd7") and r.get("full_epoch")]
    per_probe = [r["full_epoch"] / r["probe"] for r in ref if r.get("probe")]
    unit_probe = statistics.median(per_probe) if per_probe else None
    unit_time = statistics.median(r["full_epoch"] for r in ref) if ref else None
    for r in per_run:
        t = r.get("time")
        if not t:
            r["cost_epochs"] = None
        elif r.get("pgd7") and r.get("full_epoch"):
            r["cost_epochs"] = t / r["full_epoch"]
        elif unit_probe and r.get("probe"):
            r["cost_epochs"] = t / (r["probe"] * unit_probe)
        else:
            r["cost_epochs"] = t / unit_time if unit_time else None


def check_budget_targets(table: dict[str, Any], targets: dict[str, Any]) -> list[dict[str, Any]]:
    """At every budget, each coreset row (method in ``targets["coresets"]``) against every baseline row of that
    budget (any other method) that cost at most ``1 + within`` (default 10%) times as much: a baseline no
    dearer is the same cost or cheaper, so the coreset must beat it; one dearer by more than ``within`` is
    not compared. It wins where its accuracy (``metric``: autoattack, falling back to pgd where a row has
    none, or the two ran different AutoAttack versions) exceeds the baseline's by more than the larger of the
    two seed standard deviations. One dict per
    pair: ``budget``, ``coreset``, ``baseline``, ``margin`` (points), ``spread`` (points), ``ok`` (None while
    either row has fewer than 2 seeds of the metric: AutoAttack may lag the runs)."""
    within = float(targets.get("within", 0.1))
    key = targets.get("metric", "autoattack")
    checks = []
    budgets = sorted({r["budget"] for r in table["rows"] if r.get("budget") is not None})
    for b in budgets:
        rows = [r for r in table["rows"] if r.get("budget") == b and r.get("cost_epochs")]
        coresets = [r for r in rows if r["method"] in targets["coresets"]]
        for c in coresets:
            for o in rows:
                if o["method"] in targets["coresets"] or o["cost_epochs"] > (1 + within) * c["cost_epochs"]:
                    continue
                same = key != "autoattack" or c.get("autoattack_version") == o.get("autoattack_version")
                k = key if same and c.get(key) is not None and o.get(key) is not None else "pgd"
                if c.get(k) is None or o.get(k) is None:
                    continue
                spread = max(c.get(k + "_std") or 0.0, o.get(k + "_std") or 0.0)
                margin = c[k] - o[k]
                ok = None if min(_metric_seeds(c, k), _metric_seeds(o, k)) < 2 else margin > spread
                checks.append({"budget": b, "coreset": _row_name(c), "baseline": _row_name(o), "metric": k,
                               "margin": 100 * margin, "spread": 100 * spread, "ok": ok})
    return checks


def _metric_seeds(row: dict[str, Any], key: str) -> int:
    """How many of ``row``'s seeds its ``key`` mean averages (AutoAttack may cover fewer than PGD)."""
    return int(row.get("autoattack_seeds", row["seeds"])) if key == "autoattack" else int(row["seeds"])


def _row_name(r: dict[str, Any]) -> str:
    frac = "" if r["fraction"] is None else f" {r['fraction']:g}"
    return f"{r.get('label') or r['objective']} {r['method']}{frac}"


def _basis(per_run: list[dict[str, Any]], wanted: str) -> str:
    """The ``BASES`` key to use: ``wanted`` when every run has its number, else probe, else time."""
    return next(b for b in (wanted, "probe", "time")
                if b == "time" or (per_run and all(r.get(BASES[b][0]) is not None for r in per_run)))


def _speedups(rows: list[dict[str, Any]], per_run: list[dict[str, Any]], spec: dict[str, Any]) -> tuple[str, str]:
    """Set each row's ``speedup`` (vs Full of its objective) and ``speedup_vs_reference`` (vs Full of the
    spec's ``reference`` objective); returns the ``BASES`` keys used within an objective and against the
    reference.

    The basis is the spec's ``speedup_basis`` (default ``probe``), falling back to probe, then time, where
    a run lacks its number. Full-data epochs are only comparable within an objective (a Fast-AT epoch is
    not a PGD-7 epoch), so with the epoch basis the speed-up against the reference objective uses the
    probe where every run has one, else time."""
    basis = _basis(per_run, spec.get("speedup_basis") or "probe")
    cross = _basis(per_run, "probe") if basis == "epoch" else basis
    key, xkey = BASES[basis][0], BASES[cross][0]
    full = {r["objective"]: r for r in rows if r["method"] == "full"}
    ref = full.get(spec.get("reference"))
    for row in rows:
        base = full.get(row["objective"])
        row["speedup"] = base[key] / row[key] if base and base[key] and row[key] else None
        if ref and ref[xkey] and row[xkey]:
            row["speedup_vs_reference"] = ref[xkey] / row[xkey]
    return basis, cross


def check_targets(table: dict[str, Any], targets: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's ``targets`` checked against the aggregated rows: one dict per check with ``what``,
    ``value``, ``target`` and ``ok`` (None where a row or a number it needs is missing).

    ``targets``: ``objective``, ``fraction``, ``min_speedup`` (every coreset method at that fraction vs
    Full), ``max_pgd_drop`` and ``max_aa_drop`` (Full's PGD / AutoAttack accuracy minus the method's, as a
    fraction: 0.02 = 2 points), ``beat_random`` (methods whose PGD accuracy must be >= Random's at the same
    fraction) and ``beat_random_by_spread`` (if true, > Random's by more than the larger of the two rows'
    seed standard deviations; n/a while either row has fewer than 2 seeds)."""
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
        for key, label, limit in (("pgd", "PGD", "max_pgd_drop"), ("autoattack", "AutoAttack", "max_aa_drop")):
            if limit not in targets or full is None:
                continue
            a, b = full.get(key), r.get(key)
            drop = None if a is None or b is None else a - b
            checks.append({"what": f"{m} {label} drop vs full (points)", "value": None if drop is None else 100 * drop,
                           "target": f"<= {100 * targets[limit]:g}",
                           "ok": None if drop is None else drop <= targets[limit] + 1e-12})
    by_spread = bool(targets.get("beat_random_by_spread"))
    for m in targets.get("beat_random", []):
        r = rows.get(m)
        if r is None or rnd is None or r.get("pgd") is None or rnd.get("pgd") is None:
            checks.append({"what": f"{m} PGD minus random (points)", "value": None, "target": ">= 0", "ok": None})
            continue
        gap = r["pgd"] - rnd["pgd"]
        if by_spread and min(r.get("seeds", 0), rnd.get("seeds", 0)) < 2:  # no spread to beat yet
            checks.append({"what": f"{m} PGD minus random (points)", "value": 100 * gap,
                           "target": "> seed spread (needs 2 seeds a row)", "ok": None})
        elif by_spread:
            spread = max(r.get("pgd_std") or 0.0, rnd.get("pgd_std") or 0.0)
            checks.append({"what": f"{m} PGD minus random (points)", "value": 100 * gap,
                           "target": f"> seed spread {100 * spread:.2f}", "ok": gap > spread})
        else:
            checks.append({"what": f"{m} PGD minus random (points)", "value": 100 * gap, "target": ">= 0",
                           "ok": gap >= 0})
    return checks


def _fmt(m: float | None, s: float | None, pct: bool = True) -> str:
    if m is None:
        return "-"
    return f"{100 * m:.1f} ± {100 * (s or 0):.1f}" if pct else f"{m:.0f} ± {s or 0:.0f}"


def autoattack_note(aa: dict[str, Any]) -> str:
    """One line naming the AutoAttack that ran: version, attacks with their budgets (target classes
    included), images, and whether it is the standard one or a reduced budget."""
    budget_keys = {"iterations": "iterations", "restarts": "restarts", "target_classes": "target classes",
                   "n_targets": "target classes", "queries": "queries"}
    parts = ", ".join(
        f"{a.get('name')} ({', '.join(f'{budget_keys[k]} {v}' for k, v in a.items() if k in budget_keys)})"
        for a in aa.get("attacks", []))
    note = ("standard budgets, comparable to RobustBench" if aa.get("comparable_to_robustbench") else
            "reduced budgets, NOT the standard AutoAttack: its accuracy is an upper bound on what standard "
            "AutoAttack would report")
    return (f"AutoAttack: version `{aa.get('version')}`, {aa.get('norm')} eps {aa.get('eps')}, on the first "
            f"{aa.get('n', '?')} test images: {parts} ({note}).")


def _row_cells(r: dict[str, Any], ref: str | None, perceptual: bool, names: list[str],
               with_budget: bool = False) -> list[str]:
    sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
    if ref and r["objective"] != ref and r["method"] == "full" and r.get("speedup_vs_reference"):
        sp += f" ({r['speedup_vs_reference']:.2f}x vs {ref})"
    ge = f"{r['grad_error']:.3f}" if r.get("grad_error") is not None else "-"
    frac = "-" if r["fraction"] is None else f"{r['fraction']:g}"
    budget = [] if not with_budget else ["-" if r.get("budget") is None else f"{r['budget']:g}"]
    cells = [*budget, r.get("label") or r["objective"], r["method"], frac, _fmt(r["clean"], r["clean_std"]),
             _fmt(r["pgd"], r["pgd_std"])]
    cells += [_fmt(r.get("eval_" + n), r.get("eval_" + n + "_std")) for n in names]
    fast = r.get("autoattack_version") not in (None, "standard")
    aa_seeds = _metric_seeds(r, "autoattack")
    notes = ([r["autoattack_version"]] if fast else []) + (
        [f"{aa_seeds} of {r['seeds']} seeds"] if r["autoattack"] is not None and aa_seeds < r["seeds"] else [])
    cells.append(_fmt(r["autoattack"], r["autoattack_std"]) + (f" ({', '.join(notes)})" if notes else ""))
    if perceptual:
        cells += [_fmt(r["ppgd"], r["ppgd_std"]), _fmt(r["lpa"], r["lpa_std"])]
    cost = [] if not with_budget else [
        "-" if r.get("cost_epochs") is None else f"{r['cost_epochs']:.2f} ± {r.get('cost_epochs_std') or 0:.2f}"]
    return cells + [_fmt(r["time"], r["time_std"], pct=False), *cost, _fmt(r["selection_time"], None, pct=False),
                    sp, ge, str(r["seeds"])]


def _basis_note(table: dict[str, Any]) -> str:
    basis = table.get("speedup_basis")
    if basis == BASES["probe"][1]:
        return (", from train times divided by each run's machine-speed probe (advcoreset.bench.probe; the "
                "train-time column is as measured, on the day each run ran)")
    if basis == BASES["epoch"][1]:
        return (", from train times divided by the mean time of the run's own full-data epochs (Full's "
                "epochs, a coreset's warm start), so runs made at different machine speeds compare; the "
                "train-time column is as measured, on the day each run ran. A speed-up against another "
                f"objective's Full (in brackets) is on {table.get('reference_speedup_basis', 'time')}")
    return ""


def markdown(table: dict[str, Any], spec: dict[str, Any]) -> str:
    """The study as Markdown: one row per (objective, method, fraction), the AutoAttack note, the targets."""
    pgd = (table.get("pgd_key") or "pgd").replace("test_", "").replace("_acc", "").upper()
    extra = spec.get("extra_evals") or {}
    names = pgd_eval_names(spec)
    perceptual = any(r.get("ppgd") is not None for r in table["rows"])
    with_budget = any(r.get("budget") is not None for r in table["rows"])
    heads = (["budget"] if with_budget else []) + ["objective", "method", "fraction", "clean %", f"{pgd} %"]
    heads += [f"{extra[n].get('label', n) if isinstance(extra[n], dict) else n} %" for n in names]
    heads += ["AutoAttack %"] + (["PPGD %", "LPA %"] if perceptual else [])
    heads += ["train time s"] + (["cost (PGD-7 epochs)"] if with_budget else [])
    heads += ["selection s", "speed-up", "grad error", "seeds"]
    lines = [f"# Benchmark `{table['name']}`", "", spec.get("description", "").strip(), "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in table["rows"]:
        lines.append("| " + " | ".join(_row_cells(r, table.get("reference"), perceptual, names, with_budget)) + " |")
    for aa in table.get("autoattack_versions") or ([table["autoattack"]] if table.get("autoattack") else []):
        lines += ["", autoattack_note(aa)]
    if spec.get("targets"):
        t = spec["targets"]
        lines += ["", f"Targets ({t['objective']}, fraction {t['fraction']}, seed means):", "",
                  "| check | value | target | met |", "|---|---|---|---|"]
        for c in check_targets(table, t):
            v = "-" if c["value"] is None else f"{c['value']:.2f}"
            met = "n/a" if c["ok"] is None else ("yes" if c["ok"] else "**no**")
            lines.append(f"| {c['what']} | {v} | {c['target']} | {met} |")
    if spec.get("budget_targets"):
        lines += budget_lines(table, spec["budget_targets"])
        lines += recommendation_lines(table, spec["budget_targets"])
    lines += time_table(table)
    lines += ["", "Mean ± standard deviation over seeds. Train time includes warm start and selection, excludes "
              "evaluation. Speed-up is against Full of the same objective"
              + _basis_note(table) + ". Grad error is the relative "
              "gradient approximation error ||sum g - sum w g|| / ||sum g|| of the coreset, averaged over "
              "selection rounds."]
    return "\n".join(lines) + "\n"


def time_table(table: dict[str, Any]) -> list[str]:
    """Markdown lines: where each row's time went (seed means, seconds, and each part's share of the run)."""
    keys = list(dict.fromkeys(k for r in table["rows"] for k in r.get("time_parts", {})))
    if not keys:
        return []
    label = {"train": "training epochs", "selection": "selection", "eval_pgd": "final clean + PGD",
             "eval_autoattack": "AutoAttack"}
    heads = ["objective", "method", "fraction"] + [label.get(k, k.replace("eval_", "eval ")) for k in keys]
    lines = ["", "Where each run's time goes (seconds, seed means; share of the run's total in brackets):", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in table["rows"]:
        tp = r.get("time_parts", {})
        total = sum(tp.values()) or 1.0
        frac = "-" if r["fraction"] is None else f"{r['fraction']:g}"
        cells = [f"{tp[k]:.0f} ({100 * tp[k] / total:.0f}%)" if k in tp else "-" for k in keys]
        lines.append("| " + " | ".join([r["objective"], r["method"], frac, *cells]) + " |")
    return lines


def budget_lines(table: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """Markdown lines: every coreset row against the baselines of its budget that cost no more than it
    (``check_budget_targets``) and, per budget, whether some coreset row beats all of them."""
    checks = check_budget_targets(table, targets)
    pct = 100 * float(targets.get("within", 0.1))
    lines = ["", f"Budget targets (a coreset above every baseline of its budget that cost at most {pct:g}% more, "
             "by more than the larger seed spread):", "",
             "| budget | coreset | against | metric | margin (points) | spread (points) | beats it |",
             "|---|---|---|---|---|---|---|"]
    for c in checks:
        ok = "n/a" if c["ok"] is None else ("yes" if c["ok"] else "**no**")
        lines.append(f"| {c['budget']:g} | {c['coreset']} | {c['baseline']} | {c['metric']} | {c['margin']:.2f} | "
                     f"{c['spread']:.2f} | {ok} |")
    for b in sorted({c["budget"] for c in checks}):
        lines.append(f"- budget {b:g}: {budget_verdict([c for c in checks if c['budget'] == b])}")
    return lines


def budget_verdict(checks: list[dict[str, Any]]) -> str:
    """One budget's verdict from its ``check_budget_targets`` entries: met by the coreset rows that beat every
    baseline; not met when no judged row does. A row with a check left n/a (fewer than 2 seeds: a screening
    row never confirmed, or AutoAttack still to come) is named as not judged instead of holding the verdict
    back."""
    coresets = sorted({c["coreset"] for c in checks})
    unjudged = [k for k in coresets if any(c["ok"] is None for c in checks if c["coreset"] == k)]
    winners = [k for k in coresets if k not in unjudged and all(c["ok"] for c in checks if c["coreset"] == k)]
    rest = f"; not judged, fewer than 2 seeds: {', '.join(unjudged)}" if unjudged else ""
    if winners:
        return f"met by {', '.join(winners)}{rest}"
    if len(unjudged) == len(coresets):
        return "n/a (fewer than 2 seeds)"
    return f"**not met** by {', '.join(k for k in coresets if k not in unjudged)}{rest}"


def recommendations(table: dict[str, Any], within: float = 0.1) -> list[dict[str, Any]]:
    """Per budget, the row to use: the most accurate of the rows that cost at most ``1 + within`` times the
    budget, by standard AutoAttack where two or more of them have it on all their seeds (seed means), else
    by PGD. One dict per
    budget: ``budget``, ``best`` (the row), ``metric``, ``ties`` (rows whose mean is within the larger of
    the two seed spreads of the best's) and ``considered`` (how many rows fit the budget)."""
    out = []
    for b in sorted({r["budget"] for r in table["rows"] if r.get("budget") is not None}):
        fit = [r for r in table["rows"] if r.get("budget") == b and r.get("cost_epochs")
               and r["cost_epochs"] <= (1 + within) * b]
        aa = [r for r in fit if r.get("autoattack") is not None and r.get("autoattack_version") == "standard"
              and _metric_seeds(r, "autoattack") == r["seeds"]]  # a row whose AutoAttack lags waits for it
        key, pool = ("autoattack", aa) if len(aa) >= 2 else ("pgd", [r for r in fit if r.get("pgd") is not None])
        if not pool:
            continue
        best = max(pool, key=lambda r: r[key])
        ties = [r for r in pool if r is not best and best[key] - r[key] <= max(
            best.get(key + "_std") or 0.0, r.get(key + "_std") or 0.0)]
        out.append({"budget": b, "best": best, "metric": key, "ties": ties, "considered": len(fit)})
    return out


def recommendation_lines(table: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """Markdown lines: ``recommendations`` as a table (the README's recommendation table is copied from it)."""
    recs = recommendations(table, float(targets.get("within", 0.1)))
    if not recs:
        return []
    lines = ["", "Recommendation by budget (the most accurate row costing at most "
             f"{100 * (1 + float(targets.get('within', 0.1))):g}% of the budget; seed means):", "",
             "| budget (PGD-7 epochs) | use | by | accuracy % | cost | seeds | as good within the seed spread |",
             "|---|---|---|---|---|---|---|"]
    for r in recs:
        b, k = r["best"], r["metric"]
        name = "AutoAttack" if k == "autoattack" else "PGD"
        ties = ", ".join(_row_name(t) for t in r["ties"]) or "-"
        lines.append(f"| {r['budget']:g} | {_row_name(b)} | {name} | {_fmt(b[k], b.get(k + '_std'))} | "
                     f"{b['cost_epochs']:.2f} | {b['seeds']} | {ties} |")
    return lines
