"""`interest evaluate` end to end on a slice of the 114-user Taobao sample (small model)."""

from __future__ import annotations

import io
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
    "interest-stream:no-sequence",
    "interest-stream:tuned",
    "sequence",
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
    assert "| sequence |" in report and "## Paired differences" in report
    fusion = metrics["differences"]["interest-stream - interest-stream:no-sequence"]
    lo, hi = fusion["hr@20_ci"]
    assert lo <= fusion["hr@20"] <= hi
    assert "validation" in metrics["sequence_model"]
    tuned = load_settings(out / "tuned.toml")  # what `interest worker --config` does
    assert tuned.half_life_short_ms <= tuned.half_life_long_ms


def _metrics() -> dict:
    def method(hr: float, targets: int = 120) -> dict:
        return {
            "hr@10": hr / 2,
            "hr@20": hr,
            "hr@20_ci": [hr - 0.05, hr + 0.05],
            "ndcg@20": hr / 3,
            "ndcg@20_ci": [hr / 3 - 0.02, hr / 3 + 0.02],
            "mrr@20": hr / 4,
            "targets": targets,
        }

    return {
        "settings": {"users_evaluated": 9},
        "methods": {"popularity": method(0.2), "interest-stream": method(0.4)},
    }


def test_results_table_is_printed_like_the_report() -> None:
    from rich.console import Console

    from models.evaluation.evaluate import results_table

    console = Console(record=True, width=140, file=io.StringIO())
    console.print(results_table(_metrics()))
    text = console.export_text()
    rows = [line for line in text.splitlines() if "interest-stream" in line or "popularity" in line]
    assert [r.split()[1] for r in rows] == ["interest-stream", "popularity"]  # best HR@20 first
    assert "0.400" in rows[0] and "[0.350, 0.450]" in rows[0] and "[0.113, 0.153]" in rows[0]
    assert "HR@20" in text and "NDCG@20" in text and "95% CI" in text and "120" in rows[0]


def test_hr20_by_time_plot_shows_target_counts_and_labels_its_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.evaluation.evaluate import Replay, plot_by_time

    hour, cut = 3_600_000, 1_764_000_000_000
    # 5 days after the cut: day buckets with 3, 1 and 2 targets (days 0, 2, 4)
    times = [cut + h * hour for h in (1, 5, 20, 50, 98, 99)]
    result = Replay(names=["interest-stream", "popularity"], times=times)
    result.ranks = [[1, 0], [30, 2], [0, 0], [5, 5], [0, 1], [2, 0]]
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    plot_by_time(tmp_path / "hr20_by_time.png", result, cut)
    assert (tmp_path / "hr20_by_time.png").stat().st_size > 1000
    (fig,) = figures
    hr_ax = next(ax for ax in fig.axes if ax.get_lines())
    counts_ax = next(ax for ax in fig.axes if ax.patches)
    assert [round(p.get_height()) for p in counts_ax.patches] == [3, 1, 2]
    assert [t.get_text() for t in counts_ax.texts] == ["3", "1", "2"]
    assert "targets" in counts_ax.get_ylabel()
    assert hr_ax.get_xlabel().startswith("days after the cut")
    assert "HR@20" in hr_ax.get_ylabel()
    line = next(ln for ln in hr_ax.get_lines() if ln.get_label() == "interest-stream")
    assert list(line.get_xdata()) == [0.5, 2.5, 4.5]  # the middle of each day bucket
    assert [round(y, 3) for y in line.get_ydata()] == [round(1 / 3, 3), 1.0, 0.5]
    close(fig)
