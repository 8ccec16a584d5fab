"""The command line as a new user meets it: help everywhere, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    ["kafka", "tool"],
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


def test_kafka_tool_help_is_ours_before_the_name_and_an_unknown_tool_is_one_line() -> None:
    result = runner.invoke(app, ["kafka", "tool", "--help"])
    assert "console-consumer" in result.output and "consumer-groups" in result.output
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "kafka", "tool", "kafka-nope.sh", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: unknown Kafka tool 'kafka-nope.sh'")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_kafka_down_refuses_all_with_a_data_dir(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "kafka", "down", "--all", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "exclude each other" in done.stderr
