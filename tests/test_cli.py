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
