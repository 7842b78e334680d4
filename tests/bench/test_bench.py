"""The benchmark harness end to end on a tiny spec: runs, resumes, aggregates, plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from advcoreset import bench
from advcoreset.bench import plots as bench_plots
from advcoreset.bench import report as bench_report
from advcoreset.bench import runner
from advcoreset.config import ConfigError

SPEC = Path(__file__).parents[2] / "configs" / "bench" / "smoke.yaml"


def test_smoke_benchmark_runs_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert bench.main([str(SPEC), "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    rows = {(r["method"], r["fraction"]): r for r in table["rows"]}
    assert set(rows) == {("full", None), ("craig", 0.5), ("gradmatch_pb", 0.5)}
    for r in rows.values():
        assert r["seeds"] == 2 and 0 <= r["clean"] <= 1 and r["pgd"] <= r["clean"] + 1e-9
        assert r["autoattack"] is not None and r["time"] > 0
    assert rows[("full", None)]["speedup"] == pytest.approx(1.0)
    assert rows[("craig", 0.5)]["grad_error"] is not None and rows[("craig", 0.5)]["selection_time"] > 0
    md = (out / "table.md").read_text()
    assert "| pgd_linf | craig | 0.5 |" in md and "AutoAttack: version `fast`" in md
    assert (out / "robust_vs_time.png").stat().st_size > 1000
    # resumable: a finished run is not run again; a removed result (folder and record) is recomputed
    shutil.rmtree(out / "runs" / "pgd_linf" / "craig-f0.5-s1")
    (out / "table.json").unlink()
    capsys.readouterr()
    assert bench.main([str(SPEC), "--out", str(out)]) == 0
    assert "5 already done, 1 to run" in capsys.readouterr().out
    again = json.loads((out / "table.json").read_text())
    assert len(again["runs"]) == 6


def test_bad_spec_fails_before_running(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("methods: [full, craig, gradmatch_pb]", "methods: [full, kmeans]"))
    with pytest.raises(ConfigError, match="kmeans"):
        bench.main([str(bad), "--out", str(tmp_path / "o")])
    bad.write_text(SPEC.read_text().replace("eps: 0.1", "eps: -0.1"))
    with pytest.raises(ConfigError, match="objective.attack.eps"):
        bench.main([str(bad), "--out", str(tmp_path / "o")])


def test_coreset_overrides_apply_to_every_method_but_full(tmp_path):
    spec = bench.load_spec(SPEC)
    spec["objectives"]["pgd_linf"]["coreset"] = {"selection": {"warm_epochs": 3}, "optim": {"epochs": 5}}
    runs = bench.expand(spec, tmp_path)
    full = [r for r in runs if r.method == "full"]
    coresets = [r for r in runs if r.method != "full"]
    assert full and coresets
    base_epochs = spec["base"]["optim"]["epochs"]
    assert base_epochs != 5
    assert all(r.config["optim"]["epochs"] == base_epochs for r in full)
    assert all(r.config["optim"]["epochs"] == 5 and r.config["selection"]["warm_epochs"] == 3 for r in coresets)
    # the method's own selection keys still win over the override's
    assert {r.config["selection"]["method"] for r in coresets} == {"craig", "gradmatch"}


def test_targets_are_checked_against_the_rows():
    """Known answers: a method 2.6x faster and 2 points below Full passes speed and drop, one below Random
    fails the beat-random check, and a missing Random row gives n/a (None), not a pass."""
    rows = [
        {"objective": "pgd_linf", "method": "full", "fraction": None, "pgd": 0.60, "speedup": 1.0},
        {"objective": "pgd_linf", "method": "random", "fraction": 0.3, "pgd": 0.55, "speedup": 3.0},
        {"objective": "pgd_linf", "method": "craig", "fraction": 0.3, "pgd": 0.58, "speedup": 2.6},
        {"objective": "pgd_linf", "method": "gradmatch", "fraction": 0.3, "pgd": 0.54, "speedup": 2.4},
        {"objective": "pgd_linf", "method": "craig", "fraction": 0.5, "pgd": 0.10, "speedup": 1.5},
    ]
    targets = {"objective": "pgd_linf", "fraction": 0.3, "min_speedup": 2.5, "max_pgd_drop": 0.03,
               "beat_random": ["craig", "gradmatch"]}
    got = {c["what"]: c["ok"] for c in bench.check_targets({"rows": rows}, targets)}
    assert got == {
        "random speed-up vs full": True, "random PGD drop vs full (points)": False,
        "craig speed-up vs full": True, "craig PGD drop vs full (points)": True,
        "gradmatch speed-up vs full": False, "gradmatch PGD drop vs full (points)": False,
        "craig PGD minus random (points)": True, "gradmatch PGD minus random (points)": False}
    no_random = bench.check_targets({"rows": [r for r in rows if r["method"] != "random"]}, targets)
    assert [c["ok"] for c in no_random if "minus random" in c["what"]] == [None, None]


def test_pareto_front_is_the_set_no_point_dominates():
    """Known answer, and the definition checked by brute force on random points."""
    pts = [(10.0, 0.5), (5.0, 0.4), (20.0, 0.5), (30.0, 0.7), (5.0, 0.3), (8.0, 0.6)]
    assert bench_plots.pareto_front(pts) == [1, 5, 3]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        xs = torch.rand(12, 2, generator=gen).round(decimals=1).tolist()
        pts = [(a, b) for a, b in xs]
        dominated = {i for i, p in enumerate(pts) for q in pts
                     if q[0] <= p[0] and q[1] >= p[1] and q != p}
        front = bench_plots.pareto_front(pts)
        # duplicates of a front point count once
        assert {pts[i] for i in front} == {p for i, p in enumerate(pts) if i not in dominated}
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_targets_autoattack_drop_and_margin_over_random_by_seed_spread():
    rows = [
        {"objective": "o", "method": "full", "fraction": None, "pgd": 0.60, "autoattack": 0.50, "speedup": 1.0},
        {"objective": "o", "method": "random", "fraction": 0.3, "pgd": 0.55, "pgd_std": 0.01, "autoattack": 0.47,
         "seeds": 2},
        {"objective": "o", "method": "craig", "fraction": 0.3, "pgd": 0.57, "pgd_std": 0.03, "autoattack": 0.49,
         "seeds": 2},
        {"objective": "o", "method": "gradmatch", "fraction": 0.3, "pgd": 0.59, "pgd_std": 0.01,
         "autoattack": None, "seeds": 2},
    ]
    targets = {"objective": "o", "fraction": 0.3, "max_aa_drop": 0.02, "beat_random": ["craig", "gradmatch"],
               "beat_random_by_spread": True}
    got = {c["what"]: c["ok"] for c in bench.check_targets({"rows": rows}, targets)}
    assert got == {
        "random AutoAttack drop vs full (points)": False,  # 3 points
        "craig AutoAttack drop vs full (points)": True,  # 1 point
        "gradmatch AutoAttack drop vs full (points)": None,  # not measured: n/a, not a pass
        "craig PGD minus random (points)": False,  # 2 points above, spread 3
        "gradmatch PGD minus random (points)": True}  # 4 points above, spread 1
    # one seed has no spread: the margin is n/a, not a pass by any gap
    rows[1]["seeds"] = 1
    one = next(c for c in bench.check_targets({"rows": rows}, targets) if c["what"].startswith("gradmatch PGD minus"))
    assert one["ok"] is None and one["value"] == pytest.approx(4.0) and "needs 2 seeds" in one["target"]


def test_autoattack_note_names_the_target_classes_and_says_reduced():
    aa = {"version": "fast", "norm": "linf", "eps": 0.1, "n": 50, "comparable_to_robustbench": False,
          "attacks": [{"name": "apgd-ce", "iterations": 100, "restarts": 1},
                      {"name": "apgd-t", "iterations": 100, "restarts": 1, "target_classes": 3}]}
    note = bench_report.autoattack_note(aa)
    assert "apgd-t (iterations 100, restarts 1, target classes 3)" in note
    assert "first 50 test images" in note and "NOT the standard AutoAttack" in note


def _tiny_spec(tmp_path: Path, **extra: object) -> Path:
    spec = yaml.safe_load(SPEC.read_text())
    spec.update({"seeds": [0], "methods": ["full"], "jobs": 1}, **extra)
    spec["base"]["optim"]["epochs"] = 1
    spec["base"]["eval"]["autoattack"] = False
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_extra_evals_become_columns_and_report_rerenders_without_run_folders(tmp_path, capsys):
    spec = _tiny_spec(tmp_path, extra_evals={"pgd4x2": {"pgd_steps": 4, "restarts": 2, "label": "PGD-4x2"}})
    out = tmp_path / "o"
    assert bench.main([str(spec), "--out", str(out)]) == 0
    folder = out / "runs" / "pgd_linf" / "full-s0"
    ev = json.loads((folder / "eval_pgd4x2.json").read_text())
    res = json.loads((folder / "results.json").read_text())
    # the same checkpoint on the same test images: same clean accuracy as the training run's final eval
    assert ev["clean_acc"] == pytest.approx(res["test_clean_acc"])
    assert ev["pgd_steps"] == 4 and ev["pgd_restarts"] == 2
    table = json.loads((out / "table.json").read_text())
    (row,) = table["rows"]
    assert row["eval_pgd4x2"] == pytest.approx(ev["pgd4_acc"]) and row["eval_pgd4x2"] <= row["clean"] + 1e-9
    md = (out / "table.md").read_text()
    assert "| PGD-4x2 % |" in md and f"{100 * ev['pgd4_acc']:.1f} ± 0.0" in md
    # where the time went: training, the final clean + PGD pass, AutoAttack and the extra evaluation, each
    # as the run recorded it
    parts = row["time_parts"]
    assert parts["eval_pgd4x2"] == pytest.approx(sum(ev["seconds"].values()))
    assert parts["eval_pgd"] == pytest.approx(res["test_seconds"]["clean"] + res["test_seconds"]["pgd"])
    assert ("eval_autoattack" in parts) == ("autoattack" in res["test_seconds"])
    assert parts["train"] + parts["selection"] == pytest.approx(res["time_train_total"])
    assert "Where each run's time goes" in md and "| eval pgd4x2 |" in md
    capsys.readouterr()
    assert bench.main([str(spec), "--out", str(out)]) == 0  # nothing left to run or evaluate
    assert "extra evaluations" not in capsys.readouterr().out
    # the committed form of a study: no run folders, only table.json; --report rebuilds the same table
    shutil.rmtree(out / "runs")
    (out / "table.md").unlink()
    assert bench.main([str(spec), "--out", str(out), "--report"]) == 0
    assert (out / "table.md").read_text() == md
    assert json.loads((out / "table.json").read_text())["rows"] == table["rows"]
    assert (out / "robust_vs_time_runs.png").stat().st_size > 1000
    # a fresh checkout of it resumes: the recorded run is not trained again
    capsys.readouterr()
    assert bench.main([str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 already done, 0 to run" in printed and "only their record" in printed
    assert not (out / "runs").exists()


def test_only_runs_some_objectives_and_the_table_keeps_every_finished_run(tmp_path, capsys):
    spec = yaml.safe_load(_tiny_spec(tmp_path).read_text())
    spec["objectives"]["fast"] = {"objective": {"name": "fast"}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "o"
    capsys.readouterr()
    assert bench.main([str(path), "--out", str(out), "--only", "fast"]) == 0
    assert "2 runs, 0 already done, 1 to run (1 at a time), 1 left for later (--only)" in capsys.readouterr().out
    assert [r["objective"] for r in json.loads((out / "table.json").read_text())["rows"]] == ["fast"]
    assert bench.main([str(path), "--out", str(out), "--only", "pgd_linf"]) == 0
    assert "2 runs, 1 already done, 1 to run (1 at a time)\n" in capsys.readouterr().out
    table = json.loads((out / "table.json").read_text())  # the first objective's row is still there
    assert sorted(r["objective"] for r in table["rows"]) == ["fast", "pgd_linf"]
    assert set(table["spec"]["objectives"]) == {"pgd_linf", "fast"}


def test_retrain_trains_again_a_recorded_run_whose_checkpoint_is_gone_and_keeps_the_old_one(tmp_path, capsys,
                                                                                           monkeypatch):
    """A study in a fresh checkout has its run records but no checkpoints. An extra evaluation added later
    cannot run there: the bench says so in one line and attempts nothing; ``--retrain`` moves the old folder
    to ``replaced/`` (its record kept whole), trains the run again and evaluates it. Training on the CPU is
    deterministic, so the retrained run reproduces the old record's accuracies."""
    plain = _tiny_spec(tmp_path)
    out = tmp_path / "o"
    assert bench.main([str(plain), "--out", str(out)]) == 0
    folder = out / "runs" / "pgd_linf" / "full-s0"
    old = json.loads((folder / "results.json").read_text())
    (folder / "last.pt").unlink()  # what a fresh checkout of the committed study has
    spec = tmp_path / "evals.yaml"
    raw = yaml.safe_load(plain.read_text())
    raw["extra_evals"] = {"pgd5": {"pgd_steps": 5}}
    spec.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert bench.main([str(spec), "--out", str(out)]) == 1
    printed = capsys.readouterr()
    assert "no last.pt to evaluate in 1 finished runs" in printed.out and "pgd_linf/full-s0" in printed.out
    assert "--retrain" in printed.out and "pgd_linf/full-s0:pgd5" in printed.err
    assert not (out / "logs" / "pgd_linf__full-s0.eval_pgd5.log").exists()  # nothing was attempted
    # a retrain interrupted before its run lands: the old record stays in the table, and the next --retrain
    # trains the run that now has only its record
    table = (out / "table.json").read_text()
    with monkeypatch.context() as m:
        m.setattr(runner, "run_all", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            bench.main([str(spec), "--out", str(out), "--retrain"])
    assert not folder.exists() and (out / "table.json").read_text() == table
    assert bench.main([str(plain), "--out", str(out), "--report"]) == 0
    (row,) = json.loads((out / "table.json").read_text())["rows"]
    assert row["seeds"] == 1 and row["clean"] == old["test_clean_acc"]
    capsys.readouterr()
    assert bench.main([str(spec), "--out", str(out), "--retrain"]) == 0
    printed = capsys.readouterr()
    assert "--retrain: 1 finished runs to train again" in printed.out and "0 already done, 1 to run" in printed.out
    kept = out / "replaced" / "pgd_linf" / "full-s0"
    assert json.loads((kept / "results.json").read_text()) == old and (kept / "train.log").exists()
    new = json.loads((folder / "results.json").read_text())
    accs = [k for k in old if k.startswith("test_") and k.endswith("_acc")]
    assert "test_clean_acc" in accs and {k: new[k] for k in accs} == {k: old[k] for k in accs}
    assert (folder / "eval_pgd5.json").exists()
    (row,) = json.loads((out / "table.json").read_text())["rows"]
    assert row["seeds"] == 1 and row["eval_pgd5"] is not None


def test_autoattack_extra_eval_fills_the_autoattack_column_of_the_runs_it_names(tmp_path):
    """A spec entry's own seeds (per method) add runs to a study; an AutoAttack extra evaluation limited by
    ``runs`` evaluates only those, on the first ``n`` test images, and its accuracy is the one a direct call
    gives on those images (same checkpoint, same seed): it fills the row's AutoAttack column, labelled with
    its version, and the note names it."""
    from advcoreset.data import prepare_data
    from advcoreset.evaluation import evaluate
    from advcoreset.evaluation.run import load_run_model

    spec = _tiny_spec(tmp_path, extra_evals={"aa": {"autoattack": "fast", "n": 16, "runs": ["pgd_linf/*-s1"]}})
    raw = yaml.safe_load(spec.read_text())
    raw["objectives"]["pgd_linf"]["seeds"] = {"full": [0, 1]}
    spec.write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    assert bench.main([str(spec), "--out", str(out)]) == 0
    s0, s1 = (out / "runs" / "pgd_linf" / f"full-s{s}" for s in (0, 1))
    assert not (s0 / "eval_aa.json").exists()
    ev = json.loads((s1 / "eval_aa.json").read_text())
    assert ev["n_test"] == 100 and ev["autoattack"]["n"] == 16 and ev["autoattack"]["version"] == "fast"
    model, cfg = load_run_model(s1, "last.pt", "cpu")
    test = prepare_data(cfg.data, cfg.seed).test
    direct = evaluate(model, test.images, test.labels, norm="linf", eps=0.1, pgd_steps=1, pgd_alpha=None,
                      autoattack=True, aa_n=16, aa_version="fast")
    assert ev["autoattack_acc"] == direct["autoattack_acc"]
    table = json.loads((out / "table.json").read_text())
    (row,) = table["rows"]
    assert row["seeds"] == 2 and row["autoattack"] == pytest.approx(ev["autoattack_acc"])
    assert row["autoattack_std"] == 0.0 and row["autoattack_version"] == "fast" and row["autoattack_seeds"] == 1
    md = (out / "table.md").read_text()  # the cell says its mean is one seed's, not the row's two
    assert "(fast, 1 of 2 seeds) |" in md and "AutoAttack: version `fast`" in md and "first 16 test images" in md
    assert "| aa % |" not in md  # no column of its own


@pytest.mark.parametrize(("extra", "match"), [
    ({"aa": {"autoattack": "strong"}}, "give one of"),
    ({"aa": {"autoattack": "fast", "pgd_steps": 20}}, "pgd_steps .*or autoattack"),
    ({"aa": {"autoattack": "fast", "restarts": 2}}, "takes n and runs only"),
    ({"aa": {"autoattack": "fast", "runs": "b7_full/*"}}, "list of run-key patterns"),
    ({"pgd50": {"restarts": 3}}, "pgd_steps"),
    ({"pgd50": {"pgd_steps": 50, "restart": 3}}, "unknown keys"),
    ({"pgd50": {"pgd_steps": 0}}, "pgd_steps = 0"),
    ({"pgd 50": {"pgd_steps": 50}}, "letters, digits"),
])
def test_bad_extra_evals_are_rejected_before_running(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        bench.load_spec(_tiny_spec(tmp_path, extra_evals=extra))


def test_fullscale_spec_is_the_issue_s_study():
    spec = bench.load_spec(SPEC.parent / "fullscale.yaml")
    runs = bench.expand(spec, Path("/tmp/advcoreset-fullscale-check"))
    got = {(r.objective, r.method, r.fraction) for r in runs}
    coresets = {("pgd_linf", m, f) for m in ("random", "craig", "gradmatch") for f in (0.3, 0.1)}
    assert got == {("pgd_linf", "full", None), ("fast", "full", None), ("fast", "gradmatch", 0.3)} | coresets
    assert len(runs) == 18 and {r.seed for r in runs} == {0, 1}
    for r in runs:
        c = r.config
        assert c["data"]["train_subset"] is None and c["data"]["test_subset"] is None and c["data"]["val_size"] == 0
        assert c["optim"]["epochs"] == 20  # the same schedule for every row, warm start included
        assert c["objective"]["attack"]["eps"] == 0.1
        assert (c["eval"]["autoattack_version"], c["eval"]["autoattack_n"], c["eval"]["autoattack_targets"]) == (
            "standard", 1000, 9)
    assert {r.config["objective"]["name"] for r in runs if r.objective == "pgd_linf"} == {"pgd"}
    assert all(r.config["objective"]["attack"]["steps"] == 7 for r in runs if r.objective == "pgd_linf")
    assert spec["extra_evals"]["pgd50x3"] == {"pgd_steps": 50, "restarts": 3, "label": "PGD-50x3"}


def test_world_size_launches_runs_under_torchrun_and_jobs_get_their_own_devices(tmp_path):
    spec = bench.load_spec(SPEC)
    one = bench.expand(spec, tmp_path)[0]
    assert one.world_size == 1
    assert runner.train_command(one, tmp_path / "c.yaml", False)[1:3] == ["-m", "advcoreset.cli"]
    spec["world_size"] = 2
    run = bench.expand(spec, tmp_path)[0]
    cmd = runner.train_command(run, tmp_path / "c.yaml", True)
    # the launch tests/distributed/test_distributed.py runs for --resume under torchrun
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:8] == ["advcoreset", "train"] and cmd[-1] == "--resume"
    assert runner.device_groups(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert runner.device_groups(3, 1, ["4", "6", "7"]) == ["4", "6", "7"]
    assert runner.device_groups(4, 2, []) is None  # CPU: no devices to hand out
    with pytest.raises(ConfigError, match="lower --jobs"):
        runner.device_groups(3, 2, ["0", "1", "2", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text() + "\nworld_size: 0\n")
    with pytest.raises(ConfigError, match="world_size"):
        bench.load_spec(bad)


def test_an_entry_s_seeds_replace_the_spec_s_for_its_methods(tmp_path):
    spec = bench.load_spec(SPEC)
    spec["objectives"]["pgd_linf"]["seeds"] = {"craig": [0, 1, 2]}
    runs = bench.expand(spec, tmp_path)
    assert sorted((r.method, r.seed) for r in runs) == [
        ("craig", 0), ("craig", 1), ("craig", 2), ("full", 0), ("full", 1), ("gradmatch_pb", 0), ("gradmatch_pb", 1)]
    spec["objectives"]["pgd_linf"]["seeds"] = [3]
    assert {r.seed for r in bench.expand(spec, tmp_path)} == {3}
    for bad, match in (({"kmeans": [0]}, "not one of the entry's methods"), ([1, 1], "repeat a seed"),
                       ({"craig": [-1]}, "integers >= 0")):
        raw = yaml.safe_load(SPEC.read_text())
        raw["objectives"]["pgd_linf"]["seeds"] = bad
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=match):
            bench.load_spec(tmp_path / "s.yaml")


def test_runs_are_seed_major(tmp_path):
    """Every run of seed 0 comes before any run of seed 1, and within a seed the spec's order is kept."""
    spec = bench.load_spec(SPEC)
    spec["seeds"] = [0, 1]
    runs = bench.expand(spec, tmp_path)
    seeds = [r.seed for r in runs]
    assert seeds == sorted(seeds) and set(seeds) == {0, 1}
    per_seed = [[(r.objective, r.method, r.fraction) for r in runs if r.seed == s] for s in (0, 1)]
    assert per_seed[0] == per_seed[1]


def test_time_parts_of_a_run_written_before_evaluations_timed_themselves():
    """Older results.json: AutoAttack's time from its attacks' seconds, the final PGD pass as the rest."""
    res = {"time_train_total": 100.0, "times": {"selection_attack": 8.0, "selection_solver": 2.0},
           "time_final_eval": 50.0, "test_autoattack": {"attacks": [{"seconds": 30.0}, {"seconds": 5.0}]}}
    assert bench_report.time_parts(res, {}) == {"train": 90.0, "selection": 10.0, "eval_pgd": 15.0,
                                                "eval_autoattack": 35.0}


def test_amp_spec_is_the_fullscale_schedule_in_bf16():
    """The bf16 accuracy check trains and evaluates exactly as the committed fp32 rows it is compared with."""
    amp = bench.load_spec(SPEC.parent / "amp.yaml")
    fp32 = bench.load_spec(SPEC.parent / "fullscale.yaml")
    runs = bench.expand(amp, Path("/tmp/advcoreset-amp-check"))
    assert {(r.method, r.fraction, r.seed) for r in runs} == {
        (m, f, s) for m, f in (("full", None), ("gradmatch", 0.3)) for s in (0, 1)}
    ref = {(r.method, r.fraction, r.seed): r.config for r in bench.expand(fp32, Path("/tmp/advcoreset-fs-check"))
           if r.objective == "pgd_linf"}
    for r in runs:
        c, f = dict(r.config), dict(ref[(r.method, r.fraction, r.seed)])
        assert c.pop("amp") is True and f.pop("amp", "auto") == "auto"  # fp32 on the CPU
        assert {k: v for k, v in c.items() if k != "out_dir"} == {k: v for k, v in f.items() if k != "out_dir"}


def test_budget_spec_prices_every_row_near_its_budget():
    """configs/bench/budget.yaml: 36 rows at budgets 2, 4 and 7, seven of them (every baseline, GradMatch as
    published and at cached points) at 3 seeds, 78 runs; each row's nominal cost (PGD-7 epochs:
    Full 1 per epoch, RS2 0.3, a coreset its warm epoch + 0.3 per coreset epoch + 0.25 per 1-step round (0.2
    per round at cached points: no attack, the solver and a forward pass; an RS2 warm epoch 0.3; a coreset
    epoch that trains the rest clean 0.3 + 0.7 / 9, at the 1-step selection attack 0.3 + 0.7 / 4),
    a pooled coreset 0.3 + 0.25 x its pool share per epoch (at budget 7 the measured 0.65), Fast-AT / N-FGSM 0.3)
    within 10% of its budget,
    Random aside (it skips the rounds' cost)."""
    spec = bench.load_spec(SPEC.parent / "budget.yaml")
    runs = bench.expand(spec, Path("/tmp/advcoreset-budget-check"))
    assert len(runs) == 78 and {r.budget for r in runs} == {2, 4, 7}
    three = {(r.objective, r.method) for r in runs if r.seed == 2}
    assert len({(r.objective, r.method) for r in runs}) == 36 and len(three) == 21
    assert {r.seed for r in runs if (r.objective, r.method) in three} == {0, 1, 2}
    assert {m for _, m in three} == {"full", "rs2", "random", "gradmatch"}
    for r in runs:
        c = r.config
        epochs, sel = c["optim"]["epochs"], c["selection"]
        assert c["amp"] is True and c["eval"]["autoattack"] is False and c["data"]["test_subset"] is None
        if r.method == "full":
            cost = epochs * (1.0 if c["objective"]["name"] == "pgd" else 0.3)
        elif r.method == "rs2":
            assert (sel["warm_epochs"], sel["interval"]) == (0, 1)
            cost = 0.3 * epochs
        elif sel.get("pool"):  # budget 7's is sized by budgets 2 and 4's measured 0.56-0.67 per epoch
            assert (sel["warm_epochs"], sel["interval"]) == (0, 1)
            per_epoch = 0.65 if r.budget == 7 else 0.3 + 0.25 * min(1.0, sel["pool"] * sel["fraction"])
            cost = epochs * per_epoch
        else:
            rounds = len(range(sel["warm_epochs"], epochs, sel["interval"]))
            per_round = 0.2 if sel.get("points") == "cached" else 0.25
            warm = sel["warm_epochs"] * (0.3 if sel.get("warm_start") == "rs2" else 1.0)
            per_epoch = 0.3 + {"clean": 0.7 / 9, "selection_attack": 0.7 / 4}.get(sel.get("rest", "drop"), 0.0)
            cost = warm + per_epoch * (epochs - sel["warm_epochs"]) + (0 if r.method == "random" else
                                                                       per_round * rounds)
        tolerance = 0.15 if r.method == "random" else 0.1
        assert abs(cost - r.budget) <= tolerance * r.budget + 1e-9, (r.key, cost)
    assert {r.label for r in runs} == {"pgd_linf", "pgd_linf_pool2", "pgd_linf_cached", "pgd_linf_rs2warm",
                                       "pgd_linf_bullet", "pgd_linf_bullet1", "fast", "nfgsm"}
    assert {r.config["objective"]["name"] for r in runs if r.label == "nfgsm"} == {"nfgsm"}
    # AutoAttack: standard on every seed of each budget's best baseline and best coreset within cost, fast on
    # seed 0 of the other confirmed rows (and budget 7's RS2 seed 1, already run); no run gets both
    from advcoreset.bench.evals import applies
    ev = spec["extra_evals"]
    std = [r for r in runs if applies(ev["aa_standard"], r.key)]
    fast = [r for r in runs if applies(ev["aa_fast"], r.key)]
    assert len(std) == 18 and {(r.budget, r.seed) for r in std} == {(b, s) for b in (2, 4, 7) for s in (0, 1, 2)}
    assert not {r.key for r in std} & {r.key for r in fast}
    assert {r.seed for r in fast if r.key != "b7_rs2/rs2-f0.3-s1"} == {0} and len(fast) == 16
    assert {(r.objective, r.method) for r in std + fast} == three  # every confirmed row, nothing else


def test_a_warm_start_on_subsets_is_not_a_full_data_epoch():
    """A run's cost unit is its own full-data epoch: warm epochs that trained on RS2 subsets
    (``selection.warm_start: rs2``) are not one, whole-data warm epochs and Full's epochs are."""
    from advcoreset.bench.report import full_epoch_seconds

    def ep(phase, n, s):
        return {"kind": "epoch", "phase": phase, "n_train": n, "time_epoch_wall": s}

    sel = {"kind": "selection", "train_size": 100}
    assert full_epoch_seconds([ep("warm", 30, 3.0), ep("warm", 30, 3.0), sel, ep("coreset", 30, 3.5)]) is None
    assert full_epoch_seconds([ep("warm", 100, 10.0), sel, ep("coreset", 30, 3.5)]) == 10.0
    assert full_epoch_seconds([ep("full", 100, 9.0), ep("full", 100, 11.0)]) == 10.0
