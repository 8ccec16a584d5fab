"""What every benchmark result records about the code it measured."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def git_info(repo: Path = REPO) -> dict[str, Any]:
    """The checkout's commit and the files modified in its tree (empty when git is absent):
    a figure is only comparable with another of the same code."""

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(
                cmd, cwd=repo, capture_output=True, text=True, timeout=30, check=False
            ).stdout.rstrip("\n")
        except OSError:
            return ""

    status = run("git", "status", "--porcelain", "--untracked-files=all")
    modified = [line[3:] for line in status.splitlines() if len(line) > 3]
    return {"commit": run("git", "rev-parse", "HEAD"), "modified_files": modified}
