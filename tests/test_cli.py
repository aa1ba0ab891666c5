"""The console script's dispatch: every command names a module with a ``main(argv)``."""

import importlib
import subprocess
import sys

import pytest

from rsfuse.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_main(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.main)


def test_python_dash_m_runs():
    result = subprocess.run([sys.executable, "-m", "rsfuse", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "synth" in result.stdout
