"""A real Prometheus server scrapes a real `interest worker`, with the real alert rules loaded.

The worker runs on the session's broker; Prometheus (the `prometheus` binary, skipped with
a reason where it is not on PATH) scrapes it on loopback every second. The tests wait,
by polling with deadlines, until Prometheus' query API sees the events applied and the
event-to-recommendation histogram, and check that every metric the Grafana dashboard and
the alert rules use is one the worker exports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.harness import (
    REPO,
    Stack,
    WorkerProc,
    free_port,
    http_json,
    http_text,
    produce,
    wait_for,
)
from tests.unit.test_deploy_static import (
    alert_rules,
    dashboard_exprs,
    defined_series_names,
    promql_metric_names,
    series_names_for,
)

pytestmark = pytest.mark.integration

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
USERS = 8
EVENTS_PER_USER = 5
TYPES = ("view", "click", "fav", "cart", "buy")


@dataclass
class Scraped:
    worker: WorkerProc
    prometheus_url: str
    prometheus: subprocess.Popen[bytes]
    prometheus_log: Path
    produced: int

    def query(self, promql: str) -> list[dict[str, Any]] | None:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        body = http_json(url, timeout_s=5)
        if not isinstance(body, dict) or body.get("status") != "success":
            return None
        return body["data"]["result"]

    def value(self, promql: str) -> float:
        """Sum of an instant vector's values; 0 while Prometheus has nothing."""
        return sum(float(r["value"][1]) for r in self.query(promql) or [])

    def diagnostics(self) -> str:
        targets = http_json(f"{self.prometheus_url}/api/v1/targets", timeout_s=5)
        log = self.prometheus_log.read_text(errors="replace").splitlines()[-15:]
        return (
            f"targets: {json.dumps(targets)[:1500]}\n--- prometheus log:\n"
            + "\n".join(log)
            + f"\n--- worker log:\n{self.worker.log_tail()}"
        )


def _events(now_ms: int) -> list[tuple[bytes, bytes]]:
    """Valid events (CONTRACT section 1) keyed by user id, timestamped now."""
    records = []
    for u in range(USERS):
        user = f"prom-u{u}"
        for n in range(EVENTS_PER_USER):
            event = {
                "user_id": user,
                "item_id": f"i{(u * 7 + n) % 23}",
                "type": TYPES[n % len(TYPES)],
                "ts": now_ms - (EVENTS_PER_USER - n) * 1000,
                "event_id": f"{user}-e{n}",
                "category": f"c{n % 3}",
            }
            records.append((user.encode(), json.dumps(event).encode()))
    return records


def _prometheus_config(path: Path, worker_port: int) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "interest-worker",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def scraped(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "prometheus not on PATH: install it (Debian/Ubuntu: apt-get install prometheus) "
            "to run the live scrape test; CI installs it"
        )
    tmp = tmp_path_factory.mktemp("prometheus-scrape")
    stack = Stack(bootstrap=kafka_bootstrap, suffix="prom-" + uuid.uuid4().hex[:10], partitions=2)
    worker = WorkerProc(stack, tmp / "worker" / "data", name="prom-worker")
    worker.start()
    prometheus = None
    try:
        worker.wait_ready(timeout_s=120)
        produced = produce(kafka_bootstrap, stack.events, _events(int(time.time() * 1000)))
        assert produced == USERS * EVENTS_PER_USER

        config = tmp / "prometheus.yml"
        _prometheus_config(config, worker.port)
        port = free_port()
        log = tmp / "prometheus.log"
        with log.open("wb") as fh:
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=info",
                ],
                cwd=tmp,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        result = Scraped(worker, f"http://127.0.0.1:{port}", prometheus, log, produced)

        def ready() -> bool:
            assert prometheus.poll() is None, f"prometheus exited:\n{result.diagnostics()}"
            return http_text(f"{result.prometheus_url}/-/ready", timeout_s=2) is not None

        wait_for(ready, 60, result.diagnostics)
        yield result
    finally:
        if prometheus is not None and prometheus.poll() is None:
            prometheus.terminate()
            try:
                prometheus.wait(20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(10)
        worker.stop()


def test_prometheus_scrapes_events_and_latency_from_the_worker(scraped: Scraped) -> None:
    wait_for(
        lambda: scraped.value('up{job="interest-worker"}') == 1,
        60,
        lambda: "the worker target never came up:\n" + scraped.diagnostics(),
    )
    wait_for(
        lambda: scraped.value("sum(interest_events_total)") > 0,
        90,
        lambda: "sum(interest_events_total) stayed 0:\n" + scraped.diagnostics(),
    )
    wait_for(
        lambda: scraped.value("sum(interest_event_to_recommendation_seconds_count)") > 0,
        90,
        lambda: "no event-to-recommendation observation:\n" + scraped.diagnostics(),
    )
    # what the worker applied is what Prometheus stored, per type, all of it eventually
    wait_for(
        lambda: scraped.value("sum(interest_events_total)") == scraped.produced,
        60,
        lambda: f"sum(interest_events_total) != {scraped.produced}:\n" + scraped.diagnostics(),
    )
    by_type = {r["metric"]["type"] for r in scraped.query("interest_events_total") or []}
    assert by_type == {"browse", "click", "favorite", "add_to_cart", "purchase"}
    assert scraped.value("sum(interest_recommendations_published_total)") > 0


def test_real_prometheus_loads_and_evaluates_the_alert_rules(scraped: Scraped) -> None:
    expected = {r["alert"] for r in alert_rules()}

    def evaluated() -> dict[str, str] | None:
        body = http_json(f"{scraped.prometheus_url}/api/v1/rules", timeout_s=5)
        if not isinstance(body, dict) or body.get("status") != "success":
            return None
        health = {
            rule["name"]: rule["health"]
            for group in body["data"]["groups"]
            for rule in group["rules"]
        }
        return health if set(health) == expected and set(health.values()) == {"ok"} else None

    wait_for(evaluated, 60, lambda: "alert rules not all loaded and ok:\n" + scraped.diagnostics())
    # one healthy worker, valid events, no scorer failures: nothing fires, and the alerts
    # whose condition is deterministic here are not even pending
    alerts = http_json(f"{scraped.prometheus_url}/api/v1/alerts", timeout_s=5)
    states = {a["labels"]["alertname"]: a["state"] for a in alerts["data"]["alerts"]}
    assert "firing" not in states.values(), states
    quiet = {"InterestWorkerDown", "InterestScorerErrors", "InterestDeadLetterRateHigh"}
    assert not quiet & set(states), states


def test_every_dashboard_and_alert_metric_is_exported_by_the_worker(scraped: Scraped) -> None:
    text = scraped.worker.metrics()
    assert text, "the worker's /metrics answered nothing"
    exported = {"up"}  # added by Prometheus to every target
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            exported |= series_names_for(kind.strip(), name)
    # the worker serves the registry of stream/metrics.py, all of it
    missing_defined = defined_series_names() - exported
    assert not missing_defined, f"defined in stream/metrics.py but not served: {missing_defined}"
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    used |= set().union(*(promql_metric_names(r["expr"]) for r in alert_rules()))
    assert used - exported == set(), f"used by dashboard/alerts, not exported: {used - exported}"
