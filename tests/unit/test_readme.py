"""The README's configuration table and quick start stay in step with the code."""

from __future__ import annotations

from stream.config import ENV_PREFIX, Settings
from tests.support.helpers import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"{ENV_PREFIX}{name.upper()}"
        for name in Settings.model_fields
        if f"`{ENV_PREFIX}{name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_quick_start_commands_are_the_ones_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -e '.[dev]' && interest demo" in README
    assert "bash .ci/run" in README
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci
