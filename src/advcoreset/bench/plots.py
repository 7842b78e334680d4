"""The plots of ``advcoreset bench``: robust accuracy against training time and against speed-up per
objective, and one combined figure with every run a point and the Pareto front of the rows marked. An
equal-budget study (rows with a ``budget``) gets robust accuracy against cost in full-data PGD-7 epochs
instead, a line per method across the budgets (``plot_budget``).

Objectives trained against a perceptual threat (rows with PPGD / LPA accuracy, i.e. PAT) are plotted
against PPGD and LPA, the threats they were trained for, instead of l_inf PGD."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from advcoreset.bench.report import BASES

MARKERS: dict[float | None, str] = {None: "*", 0.1: "v", 0.3: "o", 0.5: "s"}
SEED_MARKERS = "o^sDvP*Xh"
MAX_ROWS_RUNS_PLOT = 20
"""Studies with more rows get no every-run figure: its legend, one entry a row, would not be readable."""


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (time, accuracy) that no other point beats: none is at most as slow and at
    least as accurate with one of the two strictly better. Ordered by time."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _metric_label(table: dict[str, Any], key: str) -> str:
    if key == "pgd":
        return (table.get("pgd_key") or "pgd").replace("test_", "").replace("_acc", "").upper()
    return {"ppgd": "PPGD", "lpa": "LPA", "autoattack": "AutoAttack"}.get(key, key)


def _panels(table: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(objective, metric) per panel: PPGD and LPA for perceptual objectives, the PGD accuracy otherwise."""
    panels = []
    for obj in dict.fromkeys(r["objective"] for r in rows):
        mine = [r for r in rows if r["objective"] == obj]
        keys = ["ppgd", "lpa"] if any(r.get("ppgd") is not None for r in mine) else ["pgd"]
        panels += [(obj, k) for k in keys if any(r.get(k) is not None for r in mine)]
    return panels


def _legend(ax: Any, methods: list[str], colors: dict[str, Any], fractions: list[float | None]) -> None:
    import matplotlib.pyplot as plt

    handles = [plt.Line2D([], [], color=colors[m], marker="o", ls="", ms=7, label=m) for m in methods]
    handles += [plt.Line2D([], [], color="0.4", marker=MARKERS.get(f, "o"), ls="", ms=7,
                           label="full data" if f is None else f"fraction {f:g}") for f in fractions]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85, ncol=1 if len(handles) < 8 else 2)


def time_axis(table: dict[str, Any]) -> tuple[str, dict[str, float], str]:
    """(record key, scale per objective, axis label) of the training-time axis, on the speed-up's basis:
    with full-data epochs, each run's time in its own full-data epochs times the median full-data epoch of
    its objective's runs; with the probe, each run's cost (time / its probe reading) times the median
    reading of all runs. Either is the run's time at one machine speed; else the times as measured."""
    runs = table.get("runs", [])
    basis = table.get("speedup_basis")
    if basis == BASES["epoch"][1]:
        scales = {obj: statistics.median(r["full_epoch"] for r in runs if r["objective"] == obj)
                  for obj in {r["objective"] for r in runs}}
        return "epochs", scales, "training time (s) at one machine speed (full-data epochs)"
    probes = [r["probe"] for r in runs if r.get("probe")]
    if basis == BASES["probe"][1] and probes:
        median = statistics.median(probes)
        return "cost", {r["objective"]: median for r in runs}, "training time (s) at one machine speed (probe)"
    return "time", {}, "training wall-clock (s)"


def plot(table: dict[str, Any], out: Path) -> list[Path]:
    """``robust_vs_time.png``, ``robust_vs_speedup.png`` (one panel per objective and threat, error bars
    = seed standard deviation) and ``robust_vs_time_runs.png`` (see ``plot_runs``) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if r["time"] is not None]
    if any(r.get("budget") is not None for r in rows):
        return [plot_budget(table, out)] + ([plot_runs(table, out)] if len(rows) <= MAX_ROWS_RUNS_PLOT else [])
    panels = _panels(table, rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fractions = list(dict.fromkeys(r["fraction"] for r in rows))
    paths = []
    tkey, tscale, tlabel = time_axis(table)
    for name, xkey, xlabel in (("robust_vs_time.png", tkey, tlabel),
                               ("robust_vs_speedup.png", "speedup", "speed-up vs Full (x)")):
        n = max(len(panels), 1)
        ncols = min(n, 3)
        nrows = -(-n // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.4 * nrows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (obj, key) in zip(axes.flat, panels, strict=False):
            for r in (r for r in rows if r["objective"] == obj and r.get(xkey) and r.get(key) is not None):
                scale = tscale.get(obj, 1.0) if xkey == tkey else 1.0
                ax.errorbar(scale * r[xkey], 100 * r[key], yerr=100 * (r.get(key + "_std") or 0),
                            xerr=scale * (r.get(xkey + "_std") or 0) if xkey == tkey else None,
                            fmt=MARKERS.get(r["fraction"], "o"), color=colors[r["method"]], ms=8, capsize=2)
            ax.set_title(f"{obj}: {_metric_label(table, key)}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{_metric_label(table, key)} accuracy (%)")
            ax.grid(alpha=0.3)
            _legend(ax, [m for m in methods if any(r["method"] == m and r["objective"] == obj for r in rows)],
                    colors, [f for f in fractions if any(r["fraction"] == f and r["objective"] == obj for r in rows)])
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    if len(rows) <= MAX_ROWS_RUNS_PLOT:
        paths.append(plot_runs(table, out))
    return paths


def _row_label(r: dict[str, Any]) -> str:
    frac = "" if r["fraction"] is None else f" {r['fraction']:g}"
    return f"{r['objective']} {r['method']}{frac}"


def plot_runs(table: dict[str, Any], out: Path) -> Path:
    """``robust_vs_time_runs.png``: robust accuracy (PGD, and AutoAttack where measured) against training
    time for every run of every objective, one marker shape per seed, the row's seed mean as a large ring
    (filled where the row is on the Pareto front of the seed means) and that front as a dashed step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if r["time"] is not None]
    runs = [r for r in table["runs"] if r.get("time") is not None]
    keys = [k for k in ("pgd", "autoattack") if any(r.get(k) is not None for r in rows)]
    seeds = sorted({r["seed"] for r in runs})
    seed_marker = {s: SEED_MARKERS[i % len(SEED_MARKERS)] for i, s in enumerate(seeds)}
    cmap = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
    colors = {_row_label(r): cmap(i % cmap.N) for i, r in enumerate(rows)}
    tkey, tscale, tlabel = time_axis(table)
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(6.0 * max(len(keys), 1), 4.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for run in (r for r in runs if _has(r, key)):
            ax.plot(tscale.get(run["objective"], 1.0) * run[tkey], 100 * run[key], ls="", ms=6, alpha=0.75,
                    color=colors.get(_row_label(run), "0.5"), marker=seed_marker[run["seed"]])
        pts = [r for r in rows if r.get(key) is not None]
        xs_all = [tscale.get(r["objective"], 1.0) * r[tkey] for r in pts]
        front = set(pareto_front(list(zip(xs_all, [r[key] for r in pts], strict=True))))
        for i, r in enumerate(pts):
            c = colors[_row_label(r)]
            ax.plot(xs_all[i], 100 * r[key], ls="", marker="o", ms=12, mew=2, color=c,
                    mfc=c if i in front else "none", mec="black" if i in front else c, alpha=0.9)
        xs, ys = zip(*sorted((xs_all[i], 100 * pts[i][key]) for i in front), strict=True)
        ax.step(xs, ys, where="post", ls="--", color="black", lw=1)
        ax.set_xlabel(f"{tlabel}\nwarm start and selection included")
        ax.set_ylabel(f"{_metric_label(table, key)} accuracy (%)")
        ax.set_title(f"{table['name']}: {_metric_label(table, key)}, every run")
        ax.grid(alpha=0.3)
    names = [_row_label(r) for r in rows]
    return _save_with_legend(fig, axes, {n: colors[n] for n in names}, seed_marker, out / "robust_vs_time_runs.png")


def _save_with_legend(fig: Any, axes: Any, colors: dict[str, Any], seed_marker: dict[int, str], path: Path) -> Path:
    """One legend for every panel (rows or lines by colour, seeds by marker, the front), right of the last
    panel (``bbox_inches="tight"`` keeps it whole); saves the figure to ``path`` and closes it."""
    import matplotlib.pyplot as plt

    handles = [plt.Line2D([], [], ls="", marker="o", ms=9, mew=2, mfc="none", color=c, label=n)
               for n, c in colors.items()]
    handles += [plt.Line2D([], [], ls="", marker=m, color="0.4", label=f"seed {s}") for s, m in seed_marker.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", ms=9, color="0.6", mec="black", label="seed mean on the front"),
                plt.Line2D([], [], ls="--", color="black", label="Pareto front of the seed means")]
    axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(r: dict[str, Any]) -> str:
    """The line a budget row belongs to: its label (or entry), method and fraction, whatever its budget."""
    frac = "" if r["fraction"] is None else f" {r['fraction']:g}"
    return f"{r.get('label') or r['objective']} {r['method']}{frac}"


def plot_budget(table: dict[str, Any], out: Path) -> Path:
    """``robust_vs_cost.png``: robust accuracy (PGD, and standard AutoAttack where measured) against cost in full-data
    PGD-7 epochs (selection and warm start included): every run a small point (one shape per seed), each
    row's seed mean a ring joined across the budgets by its method's line, rings on the Pareto front of all
    seed means filled, and that front a dashed step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if r.get("cost_epochs")]
    runs = [r for r in table["runs"] if r.get("cost_epochs")]
    keys = [k for k in ("pgd", "autoattack") if any(_has(r, k) for r in rows)] or ["pgd"]
    series = list(dict.fromkeys(_series(r) for r in rows))
    cmap = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    colors = {s: cmap(i % cmap.N) for i, s in enumerate(series)}
    seeds = sorted({r["seed"] for r in runs})
    seed_marker = {s: SEED_MARKERS[i % len(SEED_MARKERS)] for i, s in enumerate(seeds)}
    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for run in (r for r in runs if _has(r, key)):
            ax.plot(run["cost_epochs"], 100 * run[key], ls="", ms=4, alpha=0.6, color=colors.get(_series(run), "0.5"),
                    marker=seed_marker[run["seed"]])
        pts = [r for r in rows if _has(r, key)]
        front = set(pareto_front([(r["cost_epochs"], r[key]) for r in pts]))
        for name in series:
            line = sorted((r["cost_epochs"], 100 * r[key], i in front) for i, r in enumerate(pts) if _series(r) == name)
            if not line:
                continue
            ax.plot([x for x, _, _ in line], [y for _, y, _ in line], "-", color=colors[name], lw=1.2, alpha=0.8)
            for x, y, on in line:
                ax.plot(x, y, ls="", marker="o", ms=10, mew=2, color=colors[name], mfc=colors[name] if on else "none",
                        mec="black" if on else colors[name])
        if front:
            xs, ys = zip(*sorted((pts[i]["cost_epochs"], 100 * pts[i][key]) for i in front), strict=True)
            ax.step(xs, ys, where="post", ls="--", color="black", lw=1)
        ax.set_xlabel("cost (full-data PGD-7 epochs; warm start and selection included)")
        ax.set_ylabel(f"{_metric_label(table, key)} accuracy (%)")
        ax.set_title(f"{table['name']}: {_metric_label(table, key)} against cost"
                     + (" (standard)" if key == "autoattack" else ""))
        ax.grid(alpha=0.3)
    return _save_with_legend(fig, axes, colors, seed_marker, out / "robust_vs_cost.png")


def _has(r: dict[str, Any], key: str) -> bool:
    """Whether a row or run has ``key``'s accuracy for the budget figure: AutoAttack only where the standard one
    ran (a row's ``autoattack_version``, a run's ``autoattack_info``), so reduced versions are not drawn."""
    if r.get(key) is None:
        return False
    if key != "autoattack":
        return True
    return (r.get("autoattack_version") or (r.get("autoattack_info") or {}).get("version")) == "standard"
