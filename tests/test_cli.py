import pytest

from fedgai.cli import build_parser, main

COMMANDS = [[], ["data"], ["data", "demo"], ["data", "sketchify"], ["data", "check"], ["train-local"],
            ["sketch"], ["simulate"], ["job"], ["job", "export"], ["config", "show"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fedgai")
def test_help_works_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fedgai" in capsys.readouterr().out


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["data", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sketches" in err and "Traceback" not in err
    assert main(["sketch", "--model", str(tmp_path / "none.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_show_prints_the_profile(capsys):
    assert main(["config", "show", "--profile", "paper"]) == 0
    assert '"rounds": 11' in capsys.readouterr().out


def test_set_reaches_any_setting_and_help_lists_every_one_with_its_profile_values(capsys):
    from fedgai.cli import build_parser, load_config
    from fedgai.config import FedgaiConfig, profile

    args = build_parser().parse_args(["train-local", "--studio", "s", "--out", "o", "--profile", "test",
                                      "--set", "train.lr_g=0.005", "--set", "loss.clip_pretrained=none",
                                      "--set", "fed.mode=local"])
    cfg = load_config(args, {"train.seed": 3})
    assert (cfg.train.lr_g, cfg.loss.clip_pretrained, cfg.fed.mode, cfg.train.seed) == (0.005, "none", "local", 3)
    assert cfg.model.image_size == profile("test").model.image_size  # the rest is the profile's
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    text = capsys.readouterr().out
    for section, values in FedgaiConfig().to_dict().items():
        for key in values:
            assert f"{section}.{key} " in text
    assert "model.structure_critic          0              32             0" in text


def test_set_refuses_unknown_and_malformed_settings(tmp_path, capsys):
    assert main(["train-local", "--studio", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--set", "train.nope=1"]) == 2
    assert "unknown setting 'train.nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-local", "--studio", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "lr=1"])
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err
