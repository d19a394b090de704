import json

import pytest

from fedgai.config import PROFILES, ConfigError, FedgaiConfig, profile


def test_paper_profile_is_the_papers_schedule():
    cfg = profile("paper")
    assert (cfg.fed.rounds, cfg.train.epochs, cfg.model.image_size) == (11, 11, 256)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_round_trip_through_json(tmp_path, name):
    cfg = profile(name)
    cfg.save(tmp_path / "c.json")
    assert FedgaiConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"epochs": 0}}, "train.epochs must be > 0"),
        ({"train": {"epochs": "3"}}, "train.epochs must be int"),
        ({"model": {"encoder": "resnet"}}, "model.encoder must be one of"),
        ({"model": {"image_size": 100}}, "multiple of 32"),
        ({"fed": {"mode": "fedprox"}}, "fed.mode must be one of"),
        ({"privacy": {"delta": 2}}, "privacy.delta"),
        ({"train": {"epoch": 3}}, "unknown setting(s) in train: epoch"),
        ({"extra": {}}, "unknown setting(s) in config: extra"),
        ({"model": {"structure_critic": -1}}, "model.structure_critic must be >= 0"),
    ],
)
def test_bad_settings_are_named(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FedgaiConfig.from_dict(data)


def test_overrides_and_unknown_profile(tmp_path):
    cfg = profile("quick").with_overrides({"train.epochs": 7, "train.seed": None})
    assert cfg.train.epochs == 7 and cfg.train.seed == profile("quick").train.seed
    with pytest.raises(ConfigError, match="unknown setting 'train.nope'"):
        cfg.with_overrides({"train.nope": 1})
    with pytest.raises(ConfigError, match="choose one of"):
        profile("huge")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config"):
        FedgaiConfig.load(tmp_path / "bad.json")


def test_ints_accepted_for_floats():
    cfg = FedgaiConfig.from_dict(json.loads('{"train": {"lr_g": 1}}'))
    assert cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
