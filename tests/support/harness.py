"""Real worker processes, real producers and consumers, and the contract formula, for tests.

Nothing here imitates Kafka or the worker: workers are `interest worker` subprocesses on
the session's broker, and expected values come from a straightforward implementation of
CONTRACT section 2 that shares no code with the stream.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.helpers import REPO, wait_for

WEIGHTS = {"pv": 1.0, "cart": 4.0, "fav": 3.0, "buy": 8.0}
HALF_LIFE_SHORT_MS = 30 * 60_000
HALF_LIFE_LONG_MS = 7 * 86_400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout_s: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"_status": exc.code, "_body": exc.read().decode(errors="replace")}
    except (urllib.error.URLError, OSError):
        return None


def http_text(url: str, timeout_s: float = 5.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def metric_value(text: str, name: str) -> float:
    """Sum of all samples of one metric in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Stack:
    """Names shared by every worker of one test: one consumer group, its own topics."""

    bootstrap: str
    suffix: str
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def events(self) -> str:
        return f"events-{self.suffix}"

    @property
    def dlq(self) -> str:
        return f"dlq-{self.suffix}"

    @property
    def recommendations(self) -> str:
        return f"recs-{self.suffix}"

    def env(self, data_dir: Path, web_port: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
        env.update(
            {
                "INTEREST_KAFKA_BOOTSTRAP": self.bootstrap,
                "INTEREST_APP_ID": f"app-{self.suffix}",
                "INTEREST_TOPIC_EVENTS": self.events,
                "INTEREST_TOPIC_DLQ": self.dlq,
                "INTEREST_TOPIC_RECOMMENDATIONS": self.recommendations,
                "INTEREST_EVENTS_PARTITIONS": str(self.partitions),
                "INTEREST_DATA_DIR": str(data_dir),
                "INTEREST_WEB_PORT": str(web_port),
                "INTEREST_RESCORE_INTERVAL_MS": "200",
                "INTEREST_MAX_CATEGORIES": "4096",
                "INTEREST_MAX_ITEMS": "4096",
                # the sample file is ordered by user: within a partition, event time jumps
                # back by up to 9 days from one user to the next, so ids are remembered longer
                "INTEREST_DEDUP_RETENTION_MS": str(30 * 86_400_000),
                "INTEREST_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        env.update(self.extra_env)
        env.update(extra)
        return env


class WorkerProc:
    """One `interest worker` subprocess with its own data directory and web port."""

    def __init__(self, stack: Stack, data_dir: Path, name: str = "w", **extra_env: str) -> None:
        self.stack = stack
        self.data_dir = data_dir
        self.name = name
        self.port = free_port()
        self.log_path = data_dir.parent / f"{name}-{self.port}.log"
        self.extra_env = extra_env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            cwd=REPO,
            env=self.stack.env(self.data_dir, self.port, **self.extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def health(self) -> dict[str, Any] | None:
        body = http_json(self.url + "/health", timeout_s=2)
        return body if isinstance(body, dict) and body.get("status") == "ok" else None

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Until it serves HTTP and owns at least one partition."""

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"worker died:\n{self.log_tail()}"
            )
            body = self.health()
            return bool(body and body["active_partitions"] and not body["in_recovery"])

        wait_for(ready, timeout_s, lambda: f"worker {self.name} not ready:\n{self.log_tail()}")

    def metrics(self) -> str:
        return http_text(self.url + "/metrics") or ""

    def summary(self) -> str:
        """The counters that say how far the worker got, for failure messages."""
        text = self.metrics()
        names = (
            "events_total",
            "events_duplicate_total",
            "recommendations_published_total",
            "dirty_users",
        )
        return (
            ", ".join(f"{n}={metric_value(text, 'interest_' + n):g}" for n in names)
            if text
            else "no /metrics"
        )

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    rate: float | None = None,
    config: dict[str, Any] | None = None,
) -> int:
    """Send (key, value) pairs with delivery reports; return how many were delivered.
    ``config``: more producer settings (e.g. a larger ``message.max.bytes``)."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "enable.idempotence": True,
            **(config or {}),
        }
    )
    delivered = 0
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            errors.append(str(err))

    start = time.monotonic()
    for n, (key, value) in enumerate(records):
        if rate:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(30)
    assert not errors, f"delivery failed: {errors[:3]}"
    return delivered


class Collector:
    """Follows a topic from the beginning in a thread and keeps what tests assert on."""

    def __init__(self, bootstrap: str, topic: str, config: dict[str, Any] | None = None) -> None:
        """``config``: more consumer settings (e.g. a ``logger`` for librdkafka's lines)."""
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"collector-{topic}-{time.time_ns()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **(config or {}),
            }
        )
        self.consumer.subscribe([topic])
        self.latest: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[int]] = defaultdict(list)
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error() or msg.value() is None:
                continue
            body = json.loads(msg.value())
            with self.lock:
                self.messages.append(body)
                if "user_id" in body and "version" in body:
                    self.versions[body["user_id"]].append(body["version"])
                    prev = self.latest.get(body["user_id"])
                    if prev is None or body["version"] > prev["version"]:
                        self.latest[body["user_id"]] = body
        self.consumer.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)


# ---------------------------------------------------------------- the contract, independently


@dataclass(frozen=True)
class RawEvent:
    user_id: str
    item_id: str
    category: str
    behavior: str
    ts_ms: int


def read_taobao(path: Path) -> list[RawEvent]:
    with path.open(newline="") as fh:
        return [RawEvent(u, i, c, b, int(t) * 1000) for u, i, c, b, t in csv.reader(fh)]


def taobao_records(events: Iterable[RawEvent]) -> list[tuple[bytes, bytes]]:
    """Contract JSON values keyed by user id, as a producer would send them."""
    return [
        (
            e.user_id.encode(),
            json.dumps(
                {
                    "user_id": e.user_id,
                    "item_id": e.item_id,
                    "category": e.category,
                    "type": e.behavior,
                    "ts": e.ts_ms,
                }
            ).encode(),
        )
        for e in events
    ]


def defective_records(user: str) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected reason) for every rejection kind of the contract."""
    good = {"user_id": user, "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}

    def with_(**kw: object) -> bytes:
        return json.dumps({**good, **kw}).encode()

    def without(field: str) -> bytes:
        return json.dumps({k: v for k, v in good.items() if k != field}).encode()

    return [
        (b"x", b"{not json", "invalid_json"),
        (b"x", b"\xff\xfe\x00garbage", "invalid_utf8"),
        (b"x", b"[1, 2]", "not_object"),
        (b"x", without("item_id"), "missing_field"),
        (b"x", with_(ts="yesterday"), "wrong_type"),
        (b"x", with_(item_id="i" * 129), "id_too_long"),
        (b"x", with_(type="teleport"), "unknown_type"),
        (b"x", with_(pad="p" * 70_000), "too_large"),
        (b"x", with_(ts=4_102_444_800_000), "future_ts"),
        (b"x", with_(dwell_ms=-5), "negative_value"),
    ]


def expected_state(events: Iterable[RawEvent]) -> dict[str, dict[str, Any]]:
    """Per user: distinct events, t_ref and category strengths per horizon, by the formula."""
    distinct: dict[str, set[tuple[str, str, str, int]]] = defaultdict(set)
    for e in events:
        distinct[e.user_id].add((e.item_id, e.category, e.behavior, e.ts_ms))
    out: dict[str, dict[str, Any]] = {}
    for user, evs in distinct.items():
        t_ref = max(ts for *_, ts in evs)
        strengths: dict[str, dict[str, float]] = {
            "short": defaultdict(float),
            "long": defaultdict(float),
        }
        for _item, cat, behavior, ts in evs:
            for name, half_life in (("short", HALF_LIFE_SHORT_MS), ("long", HALF_LIFE_LONG_MS)):
                strengths[name][cat] += WEIGHTS[behavior] * 2 ** (-(t_ref - ts) / half_life)
        out[user] = {
            "events": len({(i, b, ts) for i, _c, b, ts in evs}),
            "t_ref": t_ref,
            **strengths,
        }
    return out


def interest_mismatches(
    expected: dict[str, dict[str, Any]], latest: dict[str, dict[str, Any]]
) -> list[str]:
    """Every way the published messages differ from the formula (empty when exact)."""
    problems: list[str] = []
    for user, exp in expected.items():
        msg = latest.get(user)
        if msg is None:
            problems.append(f"{user}: no recommendation")
            continue
        if msg["events_applied"] != exp["events"]:
            problems.append(f"{user}: events_applied {msg['events_applied']} != {exp['events']}")
            continue
        if msg["as_of"] != exp["t_ref"]:
            problems.append(f"{user}: as_of {msg['as_of']} != {exp['t_ref']}")
        for horizon in ("short", "long"):
            top = sorted(exp[horizon].values(), reverse=True)[: len(msg["interests"][horizon])]
            got = [c["strength"] for c in msg["interests"][horizon]]
            for entry in msg["interests"][horizon]:
                want = exp[horizon].get(entry["category"])
                if want is None or abs(entry["strength"] - want) > 1e-4 * max(abs(want), 1e-12):
                    problems.append(
                        f"{user}/{horizon}/{entry['category']}: {entry['strength']} != {want}"
                    )
            if any(abs(a - b) > 1e-4 * max(abs(b), 1e-12) for a, b in zip(got, top, strict=True)):
                problems.append(f"{user}/{horizon}: not the strongest categories")
    return problems


def events_fully_applied(expected: dict[str, dict[str, Any]], collector: Collector) -> bool:
    with collector.lock:
        return all(
            collector.latest.get(u, {}).get("events_applied") == exp["events"]
            for u, exp in expected.items()
        )
