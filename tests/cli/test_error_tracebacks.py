"""The command line's error policy (errors.py): a bad input is one ``error:`` line without a traceback unless
``--debug`` / ``ADVCORESET_DEBUG`` asks for it; a bug prints its traceback and says it is a bug (issue 11)."""

from __future__ import annotations

import pytest

from advcoreset import cli
from advcoreset.cli import main


def test_debug_shows_the_traceback_of_a_bad_input(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["config", "--set", "optim.epochs=0"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", "config", "--set", "optim.epochs=0"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["config", "--debug", "--set", "optim.epochs=0"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("ADVCORESET_DEBUG", "1")
    assert main(["config", "--set", "optim.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: optim.epochs")


def test_a_bug_prints_its_traceback_and_says_so(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args):
        return None + 1

    monkeypatch.setattr(cli, "_config", broken)
    assert main(["config"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError" in err and "bug in advcoreset" in err
