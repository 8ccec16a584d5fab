"""`interest evaluate` end to end on a slice of the 114-user Taobao sample (small model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.config import load_settings
from tests.support.helpers import SHARED_DATA

DATA = SHARED_DATA
SAMPLE = DATA / "taobao_userbehavior_114users" / "UserBehavior.csv"
SLICE_LINES = 1000  # the file is grouped by user: about 10 users

METHODS = {
    "interest-stream",
    "interest-stream:short-only",
    "interest-stream:long-only",
    "interest-stream:no-network",
    "interest-stream:tuned",
    "popularity",
    "category-popularity",
    "category-trending",
    "user-item-strength",
    "mf-static",
    "als",
}
METRICS = {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (10, 20, 50)} | {
    "coverage",
    "targets",
    "hr@20_ci",
    "ndcg@20_ci",
}


@pytest.mark.slow
def test_evaluate_writes_every_method_metric_and_plot(tmp_path: Path) -> None:
    if not SAMPLE.exists():
        pytest.skip(f"sample data not found at {SAMPLE} (the shared data directory is absent)")
    from models.evaluation.evaluate import evaluate_command

    events = tmp_path / "slice.csv"
    with SAMPLE.open() as src:
        events.write_text("".join(line for _, line in zip(range(SLICE_LINES), src, strict=False)))
    settings = load_settings(overrides={"embedding_dim": 8})
    out = tmp_path / "eval"
    evaluate_command(
        settings, [events], out, cut=0.7, tune=True, seed=3, epochs=1, trials=2, show_progress=False
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == METHODS
    for name, values in metrics["methods"].items():
        assert set(values) >= METRICS, name
        assert values["targets"] > 0
        lo, hi = values["hr@20_ci"]
        assert 0.0 <= lo <= values["hr@20"] <= hi <= 1.0, name
    assert 0.0 <= metrics["reachable_fraction"] <= 1.0
    assert metrics["settings"]["embedding_dim"] == 8
    for plot in ("hr_at_k.png", "sample_user_interest.png", "hr20_by_time.png"):
        assert (out / plot).stat().st_size > 1000, plot
    report = (out / "report.md").read_text()
    assert "| interest-stream |" in report and "## Tuning" in report
    tuned = load_settings(out / "tuned.toml")  # what `interest worker --config` does
    assert tuned.half_life_short_ms <= tuned.half_life_long_ms
