"""Config: YAML round trip, overrides, and validation errors that name the field."""

from __future__ import annotations

import pytest

from advcoreset.config import Config, ConfigError
from advcoreset.config_checks import load_config, validate


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = validate(Config())
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = Config.from_yaml(path)
    assert again == cfg


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["selection.method=craig", "objective.attack.eps=0.05", "data.train_subset=null",
                             "optim.milestones=[0.3, 0.6]"])
    assert cfg.selection.method == "craig"
    assert cfg.objective.attack.eps == pytest.approx(0.05)
    assert cfg.data.train_subset is None
    assert cfg.optim.milestones == [0.3, 0.6]


@pytest.mark.parametrize("override, field", [
    ("objective.attack.eps=-1", "objective.attack.eps"),
    ("model.name=resnet9000", "model.name"),
    ("selection.fraction=0", "selection.fraction"),
    ("selection.fraction=1.5", "selection.fraction"),
    ("selection.method=kmeans", "selection.method"),
    ("objective.name=foo", "objective.name"),
    ("optim.lr=0", "optim.lr"),
    ("optim.epochs=abc", "optim.epochs"),
    ("objective.attack.norm=l1", "objective.attack.norm"),
    ("data.augment=rotate", "data.augment"),
])
def test_bad_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown config field"):
        load_config(None, ["selection.fractoin=0.3"])
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  epochs: 2\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_validate():
    from pathlib import Path

    from advcoreset.bench import expand, load_spec

    configs = Path(__file__).parents[2] / "configs"
    runs, specs = sorted(configs.glob("*.yaml")), sorted((configs / "bench").glob("*.yaml"))
    assert runs and specs
    for f in runs:
        load_config(f)
    for f in specs:  # benchmark specs: every run they expand to must validate
        assert expand(load_spec(f), Path("/tmp/advcoreset-spec-check"))


def test_the_public_load_config_validates():
    import advcoreset

    assert advcoreset.load_config is load_config and advcoreset.Config is Config
    with pytest.raises(ConfigError, match="objective.attack.eps must be >= 0"):
        advcoreset.load_config(None, ["objective.attack.eps=-1"])


def test_selection_attack_defaults_to_a_longer_step_when_shortened():
    from advcoreset.objectives import build_selection_objective

    cfg = load_config(None, ["objective.attack.eps=0.1", "objective.attack.alpha=0.025", "objective.attack.steps=7",
                             "selection.attack_steps=null"])
    same = build_selection_objective(cfg.objective, cfg.selection)
    assert (same.steps, same.alpha) == (7, 0.025)  # null: the training attack's steps and step size
    default = build_selection_objective(cfg.objective, load_config(None, ["objective.attack.eps=0.1"]).selection)
    assert default.steps == 1 and default.alpha == pytest.approx(0.25)  # the default 1-step attack: 2.5 eps
    cfg = load_config(None, ["objective.attack.eps=0.1", "selection.attack_steps=2"])
    short = build_selection_objective(cfg.objective, cfg.selection)
    assert short.steps == 2 and short.alpha == pytest.approx(0.125)
    assert cfg.objective.attack.steps == 7  # the training objective is untouched
    cfg = load_config(None, ["selection.attack_steps=2", "selection.attack_alpha=0.05"])
    assert build_selection_objective(cfg.objective, cfg.selection).alpha == pytest.approx(0.05)


def test_nfgsm_needs_linf() -> None:
    from advcoreset.config import ConfigError
    from advcoreset.config_checks import load_config

    assert load_config(None, ["objective.name=nfgsm"]).objective.name == "nfgsm"
    with pytest.raises(ConfigError, match="objective.attack.norm.*linf for objective nfgsm"):
        load_config(None, ["objective.name=nfgsm", "objective.attack.norm=l2", "objective.attack.eps=0.5"])
