"""Union of threat models (PAT evaluation) and the eval command on a PAT run."""

from __future__ import annotations

import pytest
import torch

from advcoreset.config_checks import load_config
from advcoreset.evaluation.run import evaluate_run
from advcoreset.evaluation.union import ThreatModel, union_accuracy
from advcoreset.training import train


@pytest.fixture(scope="module")
def pat_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pat") / "run"
    cfg = load_config(None, [
        "data.name=digits", "data.test_subset=48", "model.width=8", "objective.name=pat",
        "objective.pat.bound=0.3", "objective.pat.steps=2", "optim.epochs=2", "optim.batch_size=64",
        "eval.pgd_steps=2", "eval.every=0", "eval.union_l2_eps=0.5", "progress=none", f"out_dir={out}"])
    res = train(cfg)
    return out, res


def test_pat_training_reports_perceptual_accuracy(pat_run):
    _, res = pat_run
    for key in ("test_clean_acc", "test_ppgd_acc", "test_lpa_acc"):
        assert 0 <= res[key] <= 1
    assert res["test_lpa_acc"] <= res["test_clean_acc"] and res["test_ppgd_acc"] <= res["test_clean_acc"]


def test_eval_reports_the_union_of_threat_models(pat_run):
    out, _ = pat_run
    res = evaluate_run(out, aa_version="fast", pgd_steps=2)
    u = res["union"]
    singles = [u[k] for k in ("linf_autoattack_acc", "l2_autoattack_acc", "ppgd_acc", "lpa_acc")]
    assert u["union_acc"] <= min(singles) + 1e-9
    # robust to all at once can miss at most what each attack removes
    assert u["union_acc"] >= 1 - sum(1 - s for s in singles) - 1e-9
    assert set(u["threat_models"]) == {"linf_autoattack", "l2_autoattack", "ppgd", "lpa"}
    assert u["threat_models"]["l2_autoattack"]["eps"] == 0.5


def test_union_is_the_and_of_the_masks(monkeypatch):
    import advcoreset.evaluation.union as union

    masks = {"a": torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool), "b": torch.tensor([1, 0, 0, 1, 1], dtype=torch.bool)}
    monkeypatch.setattr(union, "robust_mask", lambda m, x, y, tm, **kw: (masks[tm.name], {}))
    res = union_accuracy(torch.nn.Identity(), torch.zeros(5, 1, 2, 2), torch.zeros(5, dtype=torch.long),
                         [ThreatModel("a", "pgd"), ThreatModel("b", "pgd")])
    assert res["a_acc"] == pytest.approx(0.6) and res["b_acc"] == pytest.approx(0.6)
    assert res["union_acc"] == pytest.approx(0.4)


def test_unknown_threat_model_kind_is_rejected():
    import advcoreset.evaluation.union as union

    with pytest.raises(ValueError, match="unknown threat model kind"):
        union.robust_mask(torch.nn.Identity(), torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long),
                          ThreatModel("c", "rotation"))


def test_pat_trains_on_an_adversarial_coreset(tmp_path):
    """PAT through the trainer with CRAIG: selection reads gradients at the Fast-LPA points with no special
    case, the coreset is exactly ceil(0.5 n_c) per class, and the perceptual evaluation names its LPIPS."""
    import json
    import math

    out = tmp_path / "run"
    cfg = load_config(None, [
        "data.name=digits", "data.test_subset=32", "model.width=8", "objective.name=pat",
        "objective.pat.bound=0.3", "objective.pat.steps=2", "optim.epochs=3", "optim.batch_size=64",
        "selection.method=craig", "selection.fraction=0.5", "selection.warm_epochs=1", "selection.interval=1",
        "eval.pgd_steps=2", "eval.every=0", "progress=none", f"out_dir={out}"])
    res = train(cfg)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sels = [r for r in recs if r["kind"] == "selection"]
    assert [r["epoch"] for r in sels] == [2, 3]
    for r in sels:
        sizes = [c["size"] for c in r["solver_stats"]["classes"].values()]
        assert r["coreset_size"] == sum(math.ceil(0.5 * n) for n in sizes) < r["train_size"]
        assert 0 <= r["grad_error"] < 1 and r["time_selection_attack"] > 0
    assert [r["phase"] for r in recs if r["kind"] == "epoch"] == ["warm", "coreset", "coreset"]
    assert res["test_perceptual_lpips"] == "self-bound" and 0 <= res["test_lpa_acc"] <= res["test_clean_acc"]
