"""The machine-speed probe and the probe-normalised speed-ups of ``advcoreset bench``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from advcoreset.bench import plots as bench_plots
from advcoreset.bench import probe as bench_probe
from advcoreset.bench import report as bench_report
from advcoreset.bench.spec import SpecError, load_spec

SPEC = Path(__file__).parents[2] / "configs" / "bench" / "smoke.yaml"


def test_probe_times_real_work():
    """More steps take longer: the probe times work, it does not return a constant."""
    one = bench_probe.probe_seconds(threads=1, steps=1, repeats=1)
    four = bench_probe.probe_seconds(threads=1, steps=4, repeats=1)
    assert 0 < one < four


def test_readings_append_and_median(tmp_path, monkeypatch):
    values = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(bench_probe, "probe_seconds", lambda threads=None: next(values))
    assert bench_probe.probe_median(tmp_path) is None
    for when in ("start", "resume", "end"):
        bench_probe.record_probe(tmp_path, when)
    readings = bench_probe.read_probes(tmp_path)
    assert [r["when"] for r in readings] == ["start", "resume", "end"]
    assert bench_probe.probe_median(tmp_path) == 2.0
    (tmp_path / bench_probe.PROBE_FILE).write_text("{not json")
    assert bench_probe.read_probes(tmp_path) == []  # a damaged file is no reading, not a crash


def _run(folder: Path, method: str, fraction: float | None, seed: int, train_s: float, probe_s: float | None,
         epochs: list[tuple[str, float]] = (), objective: str = "pgd"):
    """A finished run's folder: ``epochs`` are (phase, wall seconds) records of its metrics.jsonl."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"test_clean_acc": 0.8, "test_pgd20_acc": 0.7,
                                                     "time_train_total": train_s, "times": {}}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "epoch", "epoch": i + 1, "phase": p, "time_epoch_wall": s}) + "\n"
        for i, (p, s) in enumerate(epochs)))
    if probe_s is not None:
        (folder / bench_probe.PROBE_FILE).write_text(json.dumps([{"when": "start", "seconds": probe_s}]))
    return SimpleNamespace(objective=objective, method=method, fraction=fraction, seed=seed, folder=folder)


def test_speedup_divides_by_the_probe(tmp_path):
    """Known answer: Full took 100 s on a machine whose probe read 1 s, the coreset 60 s on one twice as slow
    (probe 2 s): the normalised speed-up is (100 / 1) / (60 / 2) = 3.33x, not the raw 1.67x."""
    runs = [_run(tmp_path / "f", "full", None, 0, 100.0, 1.0), _run(tmp_path / "g", "gradmatch", 0.3, 0, 60.0, 2.0)]
    spec = {"name": "t", "objectives": {"pgd": {}}}
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    row = next(r for r in table["rows"] if r["method"] == "gradmatch")
    assert row["speedup"] == pytest.approx(100 / 30)
    assert table["speedup_basis"] == "probe-normalised time"
    assert "machine-speed probe" in bench_report.markdown(table, spec)
    # the plots' time axis: each run's time at one machine speed, the median reading (1.5 s)
    key, scale, label = bench_plots.time_axis(table)
    assert (key, scale) == ("cost", {"pgd": 1.5}) and "one machine speed" in label
    assert [scale["pgd"] * r[key] for r in table["rows"]] == pytest.approx([150.0, 45.0])  # Full 100/1, coreset 60/2
    assert (tmp_path / "robust_vs_time_runs.png") in bench_plots.plot(table, tmp_path)


def test_without_a_probe_for_every_run_speedup_uses_time(tmp_path):
    runs = [_run(tmp_path / "f", "full", None, 0, 100.0, 1.0), _run(tmp_path / "g", "gradmatch", 0.3, 0, 60.0, None)]
    spec = {"name": "t", "objectives": {"pgd": {}}}
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    row = next(r for r in table["rows"] if r["method"] == "gradmatch")
    assert row["speedup"] == pytest.approx(100 / 60)
    assert table["speedup_basis"] == "time"
    assert bench_plots.time_axis(table)[:2] == ("time", {})


def test_epoch_basis_divides_by_each_runs_full_data_epoch(tmp_path):
    """Known answer: Full trained 4 epochs of 10 s and 30 s (mean 20 s, 80 s in all) on one day; the coreset
    took 60 s on a day twice as slow, a 40 s warm epoch then 20 s on coresets. In its own full-data
    epochs Full took 4.0 and the coreset 1.5: 2.67x (raw 1.33x; the probes, 1 s and 1 s, saw no change).
    Fast-AT's Full (epochs of 5 s) is compared with PGD's Full on the probe: 80 / 10 = 8x."""
    runs = [_run(tmp_path / "f", "full", None, 0, 80.0, 1.0, [("full", 10.0), ("full", 30.0)] * 2),
            _run(tmp_path / "g", "gradmatch", 0.3, 0, 60.0, 1.0, [("warm", 40.0)] + [("coreset", 10.0)] * 2),
            _run(tmp_path / "x", "full", None, 0, 10.0, 1.0, [("full", 5.0)] * 2, objective="fast")]
    spec = {"name": "t", "objectives": {"pgd": {}, "fast": {}}, "speedup_basis": "epoch", "reference": "pgd"}
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    rows = {(r["objective"], r["method"]): r for r in table["rows"]}
    assert rows["pgd", "gradmatch"]["speedup"] == pytest.approx(80 / 20 / (60 / 40))
    assert rows["fast", "full"]["speedup"] == pytest.approx(1.0)
    assert rows["fast", "full"]["speedup_vs_reference"] == pytest.approx(8.0)
    assert table["reference_speedup_basis"] == "probe-normalised time"
    assert "own full-data epochs" in bench_report.markdown(table, spec)
    # the time axis: epochs times the median full-data epoch of the objective's runs (20 and 40 s -> 30 s)
    key, scale, _ = bench_plots.time_axis(table)
    assert key == "epochs" and scale == {"pgd": 30.0, "fast": 5.0}
    assert [scale[r["objective"]] * r[key] for r in table["rows"]] == pytest.approx([120.0, 45.0, 10.0])
    assert (tmp_path / "robust_vs_time_runs.png") in bench_plots.plot(table, tmp_path)
    # a run without a full-data epoch (no warm start) puts the study back on the probe
    _run(tmp_path / "g2", "gradmatch", 0.3, 1, 30.0, 1.0, [("coreset", 10.0)] * 3)
    runs.append(SimpleNamespace(objective="pgd", method="gradmatch", fraction=0.3, seed=1, folder=tmp_path / "g2"))
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    assert table["speedup_basis"] == "probe-normalised time"


@pytest.mark.parametrize("extra, match", [({"probe": "yes"}, "probe must be true or false"),
                                          ({"speedup_basis": "epochs"}, "speedup_basis must be time, probe or epoch"),
                                          ({"probe": True, "jobs": 2}, "probe: true needs jobs: 1")])
def test_bad_probe_settings_are_refused(tmp_path, extra, match):
    spec = yaml.safe_load(SPEC.read_text())
    spec.update(extra)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_rows_follow_the_specs_fraction_order(tmp_path):
    """Property: Full first, then the spec's fractions in its own order (the headline 0.3 before 0.1), an
    unlisted fraction last; within a fraction the methods keep ``method_order``."""
    runs = [_run(tmp_path / f"{m}{f}", m, f, 0, 50.0, 1.0)
            for m, f in [("gradmatch", 0.1), ("random", 0.1), ("gradmatch", 0.5), ("gradmatch", 0.3),
                         ("random", 0.3), ("full", None)]]
    spec = {"name": "t", "objectives": {"pgd": {}}, "fractions": [0.3, 0.1]}
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "random", "gradmatch"])
    assert [(r["method"], r["fraction"]) for r in table["rows"]] == [
        ("full", None), ("random", 0.3), ("gradmatch", 0.3), ("random", 0.1), ("gradmatch", 0.1),
        ("gradmatch", 0.5)]


def _budget_run(folder: Path, entry: str, label: str, budget: float, method: str, fraction, seed: int,
                train_s: float, probe_s: float, epochs, acc: float, pgd7: bool):
    run = _run(folder, method, fraction, seed, train_s, probe_s, epochs, objective=entry)
    res = json.loads((folder / "results.json").read_text())
    res["test_autoattack_acc"] = acc
    (folder / "results.json").write_text(json.dumps(res))
    run.label, run.budget = label, budget
    run.config = {"objective": {"name": "pgd" if pgd7 else "fast", "attack": {"steps": 7 if pgd7 else 1}}}
    return run


def test_budget_rows_cost_in_pgd7_epochs_and_the_targets_compare_equal_costs(tmp_path):
    """Known answers. Full-on-budget: 2 epochs of 100 s on a probe of 1 s: cost 2. A coreset with a 100 s warm
    epoch and 210 s in all: 2.1. Fast-AT without PGD-7 epochs, 60 s on a machine twice as slow (probe 2 s):
    60 / (2 x 100) = 0.3 epochs: cheaper, so the coreset must beat it too. A Full run of 3 epochs (cost 3,
    more than 10% dearer than the coreset) is not compared. Two seeds each: the coreset's AutoAttack margins
    over Full (1.0 +- spreads of 0.1) and over Fast-AT beat them; another coreset is not a baseline."""
    runs = []
    for seed, (f_acc, g_acc) in enumerate(((0.70, 0.71), (0.70, 0.71))):
        f_acc += 0.001 * seed
        runs += [
            _budget_run(tmp_path / f"f{seed}", "b2_full", "pgd_linf", 2, "full", None, seed, 200.0, 1.0,
                        [("full", 100.0)] * 2, f_acc, True),
            _budget_run(tmp_path / f"g{seed}", "b2_gm", "pgd_linf", 2, "gradmatch", 0.3, seed, 210.0, 1.0,
                        [("warm", 100.0), ("coreset", 30.0)], g_acc + 0.001 * seed, True),
            _budget_run(tmp_path / f"x{seed}", "b2_fast", "fast", 2, "full", None, seed, 60.0, 2.0,
                        [("full", 30.0)] * 2, 0.5, False),
            _budget_run(tmp_path / f"l{seed}", "b2_long", "pgd_long", 2, "full", None, seed, 300.0, 1.0,
                        [("full", 100.0)] * 3, 0.9, True),
            _budget_run(tmp_path / f"c{seed}", "b2_cr", "pgd_linf", 2, "craig", 0.3, seed, 210.0, 1.0,
                        [("warm", 100.0), ("coreset", 30.0)], 0.9, True),
        ]
    spec = {"name": "t", "objectives": {k: {"budget": 2} for k in ("b2_full", "b2_gm", "b2_fast", "b2_long", "b2_cr")},
            "budget_targets": {"coresets": ["gradmatch", "craig"], "within": 0.1}}
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch", "craig"])
    cost = {(r["objective"], r["method"]): r["cost_epochs"] for r in table["rows"]}
    assert cost == {("b2_full", "full"): pytest.approx(2.0), ("b2_gm", "gradmatch"): pytest.approx(2.1),
                    ("b2_fast", "full"): pytest.approx(0.3), ("b2_long", "full"): pytest.approx(3.0),
                    ("b2_cr", "craig"): pytest.approx(2.1)}
    checks = [c for c in bench_report.check_budget_targets(table, spec["budget_targets"])
              if c["coreset"] == "pgd_linf gradmatch 0.3"]
    assert sorted(c["baseline"] for c in checks) == ["fast full", "pgd_linf full"]
    by = {c["baseline"]: c for c in checks}
    assert by["pgd_linf full"]["margin"] == pytest.approx(1.0) and by["pgd_linf full"]["ok"] is True
    assert by["fast full"]["margin"] == pytest.approx(21.05) and by["fast full"]["ok"] is True
    md = bench_report.markdown(table, spec)
    assert "| budget | objective |" in md and "cost (PGD-7 epochs)" in md and "| 2 | fast | full |" in md
    assert "- budget 2: met by pgd_linf craig 0.3, pgd_linf gradmatch 0.3" in md
    from advcoreset.bench.plots import plot
    (tmp_path / "plots").mkdir()
    paths = plot(table, tmp_path / "plots")
    assert [p.name for p in paths] == ["robust_vs_cost.png", "robust_vs_time_runs.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_budget_verdict_judges_the_confirmed_rows_and_names_the_unconfirmed_ones():
    """Known answers: a confirmed coreset that loses to one baseline and a one-seed screening row (n/a) give
    "not met" naming both; one that beats every baseline meets it; with only n/a rows it is n/a."""
    def c(coreset: str, baseline: str, ok: bool | None) -> dict:
        return {"budget": 7, "coreset": coreset, "baseline": baseline, "ok": ok}
    lost = [c("gm", "full", False), c("gm", "rs2", True), c("craig", "full", None), c("craig", "rs2", None)]
    assert bench_report.budget_verdict(lost) == "**not met** by gm; not judged, fewer than 2 seeds: craig"
    won = lost + [c("cached", "full", True), c("cached", "rs2", True)]
    assert bench_report.budget_verdict(won) == "met by cached; not judged, fewer than 2 seeds: craig"
    assert bench_report.budget_verdict(lost[2:]) == "n/a (fewer than 2 seeds)"
    assert bench_report.budget_verdict(lost[:2]) == "**not met** by gm"


def _with_autoattack(run, acc: float, version: str):
    res = json.loads((run.folder / "results.json").read_text())
    res["test_autoattack_acc"] = acc
    res["test_autoattack"] = {"version": version, "norm": "linf", "eps": 0.1, "n": 1000, "attacks": []}
    (run.folder / "results.json").write_text(json.dumps(res))
    return run


def test_recommendation_is_the_best_row_that_fits_the_budget(tmp_path):
    """Known answers at budget 2, two seeds each. By standard AutoAttack (two rows have it): GradMatch
    (cost 2.1, 0.72 / 0.74, mean 0.73) beats Full (cost 2.0, 0.71 / 0.71) by 2 points, more than either
    spread, so Full is no tie; a 3-epoch Full (cost 3.0 > 2.2) is the most accurate but does not fit. A
    Fast-AT row measured only with fast AutoAttack is ranked by neither AutoAttack; the coreset is checked
    against it on PGD (different AutoAttack versions are not compared)."""
    runs = []
    for seed in (0, 1):
        runs += [
            _with_autoattack(_budget_run(tmp_path / f"f{seed}", "b2_full", "pgd_linf", 2, "full", None, seed, 200.0,
                                         1.0, [("full", 100.0)] * 2, 0.0, True), 0.71, "standard"),
            _with_autoattack(_budget_run(tmp_path / f"g{seed}", "b2_gm", "pgd_linf", 2, "gradmatch", 0.3, seed, 210.0,
                                         1.0, [("warm", 100.0), ("coreset", 30.0)], 0.0, True),
                             0.72 + 0.02 * seed, "standard"),
            _with_autoattack(_budget_run(tmp_path / f"x{seed}", "b2_fast", "fast", 2, "full", None, seed, 60.0, 2.0,
                                         [("full", 30.0)] * 2, 0.0, False), 0.9, "fast"),
            _with_autoattack(_budget_run(tmp_path / f"l{seed}", "b2_long", "pgd_long", 2, "full", None, seed, 300.0,
                                         1.0, [("full", 100.0)] * 3, 0.0, True), 0.95, "standard"),
        ]
    spec = {"name": "t", "objectives": {k: {"budget": 2} for k in ("b2_full", "b2_gm", "b2_fast", "b2_long")},
            "budget_targets": {"coresets": ["gradmatch"], "within": 0.1}}
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    (rec,) = bench_report.recommendations(table)
    assert (rec["budget"], rec["metric"], rec["considered"]) == (2, "autoattack", 3)
    assert bench_report._row_name(rec["best"]) == "pgd_linf gradmatch 0.3" and rec["ties"] == []
    assert rec["best"]["autoattack"] == pytest.approx(0.73)
    by = {c["baseline"]: c for c in bench_report.check_budget_targets(table, spec["budget_targets"])}
    assert by["pgd_linf full"]["metric"] == "autoattack" and by["fast full"]["metric"] == "pgd"
    md = bench_report.markdown(table, spec)
    assert "| 2 | pgd_linf gradmatch 0.3 | AutoAttack | 73.0 ± 1.4 | 2.10 | 2 | - |" in md
    assert "90.0 ± 0.0 (fast)" in md and "AutoAttack: version `standard`" in md and "version `fast`" in md
    # a tie: GradMatch's spread (1.4 points) covers a Full 1 point lower
    for seed in (0, 1):
        _with_autoattack(runs[4 * seed], 0.72, "standard")
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    (rec,) = bench_report.recommendations(table)
    assert [bench_report._row_name(t) for t in rec["ties"]] == ["pgd_linf full"]
    # AutoAttack lagging the runs: GradMatch's second seed not yet attacked. Its cell says so, it does not
    # rank by a one-seed AutoAttack mean (PGD decides, as for every row), and its check waits
    res = json.loads((runs[5].folder / "results.json").read_text())
    del res["test_autoattack_acc"], res["test_autoattack"]
    (runs[5].folder / "results.json").write_text(json.dumps(res))
    table = bench_report.aggregate(bench_report.collect(runs, tmp_path), spec, ["full", "gradmatch"])
    gm = next(r for r in table["rows"] if r["method"] == "gradmatch")
    assert (gm["seeds"], gm["autoattack_seeds"], gm["autoattack"]) == (2, 1, pytest.approx(0.72))
    assert "72.0 ± 0.0 (1 of 2 seeds)" in bench_report.markdown(table, spec)
    (rec,) = bench_report.recommendations(table)
    assert rec["metric"] == "pgd"
    by = {c["baseline"]: c for c in bench_report.check_budget_targets(table, spec["budget_targets"])}
    assert by["pgd_linf full"]["metric"] == "autoattack" and by["pgd_linf full"]["ok"] is None


def test_budget_keys_are_checked(tmp_path):
    base = {"name": "t", "seeds": [0], "methods": ["full"], "base": {}, "objectives": {"a": {"budget": 2}}}
    for bad, match in (({"budget": -1}, "budget must be a positive number"),
                       ({"budget": True}, "budget must be a positive number"),
                       ({"label": "a b"}, "label must be a plain name")):
        spec = {**base, "objectives": {"a": bad}}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match=match):
            load_spec(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**base, "budget_targets": {"coresets": ["kmeans"]}}))
    with pytest.raises(SpecError, match="budget_targets.coresets"):
        load_spec(tmp_path / "s.yaml")
