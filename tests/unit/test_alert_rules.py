"""The Prometheus configuration and alert rules, checked by the real promtool.

`promtool check config`, `promtool check rules` and `promtool test rules` on
deploy/prometheus/alerts_test.yml, which fires every alert on synthetic series and checks
that a healthy deployment fires none. No broker needed. Skipped where promtool is not on
PATH (Debian/Ubuntu: `apt-get install prometheus`; CI installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.helpers import REPO

PROM_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
README = REPO / "README.md"

REQUIRED_ALERTS = {
    # alert name -> a metric its expression must use
    "InterestWorkerDown": "up",
    "InterestConsumerLagGrowing": "interest_consumer_lag",
    "InterestDeadLetterRateHigh": "interest_events_rejected_total",
    "InterestScorerErrors": "interest_scorer_errors_total",
    "InterestLatencyP99High": "interest_event_to_recommendation_seconds_bucket",
    "InterestNoRecommendations": "interest_recommendations_published_total",
}
SEVERITIES = {"page", "warning", "info"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def anchor(alert: str) -> str:
    """README anchor of an alert's runbook: heading '#### Alert: <Name>' as GitHub slugs it."""
    return "alert-" + alert.lower()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not on PATH: install Prometheus (Debian/Ubuntu: apt-get install "
            "prometheus) to check the config and run the alert unit tests; CI installs it"
        )
    return path


def _run(promtool: str, *args: str) -> str:
    proc = subprocess.run(
        [promtool, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


# --------------------------------------------------------------------------- promtool


def test_promtool_check_config(promtool: str) -> None:
    out = _run(promtool, "check", "config", str(CONFIG.relative_to(REPO)))
    assert "SUCCESS" in out and "1 rule files found" in out


def test_promtool_check_rules(promtool: str) -> None:
    out = _run(promtool, "check", "rules", str(ALERTS.relative_to(REPO)))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_alert_unit_tests(promtool: str) -> None:
    out = _run(promtool, "test", "rules", str(ALERTS_TEST.relative_to(REPO)))
    assert "SUCCESS" in out and "FAILED" not in out


# --------------------------------------------------------------------------- structure


def test_required_alerts_exist_and_use_their_metric() -> None:
    rules = {r["alert"]: r for r in _rules()}
    assert set(REQUIRED_ALERTS) <= set(rules), sorted(set(REQUIRED_ALERTS) - set(rules))
    for name, metric in REQUIRED_ALERTS.items():
        assert re.search(rf"\b{re.escape(metric)}\b", rules[name]["expr"]), (name, metric)


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    names = [r["alert"] for r in _rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in _rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), name
        assert annotations.get("description", "").strip(), name
        assert annotations.get("runbook_url") == f"README.md#{anchor(name)}", name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: needs a `for`"


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    """alerts_test.yml fires each alert at least once and has a case where it stays silent."""
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    fired, silent = set(), set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in _rules()}
    assert names <= fired, f"never fired in alerts_test.yml: {sorted(names - fired)}"
    assert names <= silent, f"never checked silent in alerts_test.yml: {sorted(names - silent)}"
    healthy = [t for t in doc["tests"] if "healthy" in t.get("name", "")]
    assert healthy, "a 'healthy' test case is expected"
    assert {c["alertname"] for c in healthy[0]["alert_rule_test"]} == names
    assert not any(c.get("exp_alerts") for c in healthy[0]["alert_rule_test"])


def test_runbook_anchors_exist_in_readme() -> None:
    text = README.read_text() if README.exists() else ""
    if "#### Alert:" not in text:
        pytest.skip("README.md has no operations section with '#### Alert:' headings yet")
    headings = {
        "alert-" + m.group(1).strip().lower()
        for m in re.finditer(r"^#### Alert: (.+)$", text, re.M)
    }
    for rule in _rules():
        assert anchor(rule["alert"]) in headings, f"README lacks '#### Alert: {rule['alert']}'"
