"""CLI polish: --version, help text on every option of every subcommand."""

from __future__ import annotations

import argparse

import pytest

import advcoreset
from advcoreset.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"advcoreset {advcoreset.__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def test_every_option_of_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"train", "eval", "export", "config", "bench"} <= set(commands)
    bare = [f"{name} {a.option_strings or a.dest}" for name, p in [("advcoreset", parser), *commands.items()]
            for a in p._actions
            if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help != argparse.SUPPRESS)]
    assert not bare, f"options without help text: {bare}"
    for name in commands:  # and the printed help shows it
        with pytest.raises(SystemExit):
            main([name, "-h"])
        text = capsys.readouterr().out
        for a in commands[name]._actions:
            if a.option_strings and a.help:
                assert a.help.split()[0] in text, (name, a.option_strings)
