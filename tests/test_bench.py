"""The benchmark harness end to end on a tiny spec: runs, resumes, aggregates, plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from advcoreset import bench
from advcoreset.config import ConfigError

SPEC = Path(__file__).parents[1] / "configs" / "bench_smoke.yaml"


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
    # resumable: a finished run is not run again; a removed result is recomputed
    shutil.rmtree(out / "runs" / "pgd_linf" / "craig-f0.5-s1")
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


def test_world_size_launches_runs_under_torchrun_and_jobs_get_their_own_devices(tmp_path):
    spec = bench.load_spec(SPEC)
    one = bench.expand(spec, tmp_path)[0]
    assert one.world_size == 1
    assert bench.train_command(one, tmp_path / "c.yaml", False)[1:3] == ["-m", "advcoreset.cli"]
    spec["world_size"] = 2
    run = bench.expand(spec, tmp_path)[0]
    cmd = bench.train_command(run, tmp_path / "c.yaml", True)
    # the launch tests/test_distributed.py runs for --resume under torchrun
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:8] == ["advcoreset", "train"] and cmd[-1] == "--resume"
    assert bench.device_groups(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert bench.device_groups(3, 1, ["4", "6", "7"]) == ["4", "6", "7"]
    assert bench.device_groups(4, 2, []) is None  # CPU: no devices to hand out
    with pytest.raises(ConfigError, match="lower --jobs"):
        bench.device_groups(3, 2, ["0", "1", "2", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text() + "\nworld_size: 0\n")
    with pytest.raises(ConfigError, match="world_size"):
        bench.load_spec(bad)
