"""The command line as a new user meets it: help everywhere, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from stream.cli import app

runner = CliRunner()

COMMANDS = [
    [],
    ["worker"],
    ["produce"],
    ["tail"],
    ["inspect"],
    ["train"],
    ["evaluate"],
    ["demo"],
    ["kafka"],
    ["kafka", "up"],
    ["kafka", "down"],
    ["kafka", "status"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "interest")
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_setting_is_one_line_without_traceback() -> None:
    env = {"INTEREST_TOP_K": "many", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "tail", "--max-messages", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "INTEREST_TOP_K" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
