"""The streaming pipeline end to end: real broker, real `interest worker` processes."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from stream.worker.main import RUNNING_MARKER
from stream.worker.state_store import UserPartitioner
from tests.support.harness import (
    REPO,
    Collector,
    Stack,
    WorkerProc,
    defective_records,
    events_fully_applied,
    expected_state,
    free_port,
    http_json,
    interest_mismatches,
    metric_value,
    produce,
    read_taobao,
    taobao_records,
    wait_for,
)

pytestmark = pytest.mark.integration

TAOBAO = "taobao_userbehavior_114users/UserBehavior.csv"


@pytest.fixture
def taobao(shared_data: Path) -> Path:
    path = shared_data / TAOBAO
    if not path.exists():
        pytest.skip(f"{path} is absent: the real-data pipeline tests need ../shared/data")
    return path


@pytest.fixture
def stack(kafka_bootstrap: str) -> Stack:
    return Stack(bootstrap=kafka_bootstrap, suffix=uuid.uuid4().hex[:10])


def assert_exact(
    expected: dict, collector: Collector, timeout_s: float, workers: list[WorkerProc]
) -> None:
    """Wait until every user's newest message carries all its events, then compare values."""
    wait_for(
        lambda: events_fully_applied(expected, collector),
        timeout_s,
        lambda: (
            "not every user is fully applied; first problems: "
            + "; ".join(interest_mismatches(expected, collector.latest)[:5])
            + "".join(f"\n--- {w.name}: {w.summary()} log:\n{w.log_tail(15)}" for w in workers)
        ),
    )
    with collector.lock:
        problems = interest_mismatches(expected, collector.latest)
        versions = dict(collector.versions)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
    for user, seen in versions.items():
        assert all(b > a for a, b in itertools.pairwise(seen)), f"{user}: versions {seen}"


REASONS = {"your_interest", "trending_in_category", "similar_to_your_interests", "popular"}


def assert_blended_items(msg: dict) -> None:
    """Without a model the transparent blend still recommends, with scores and reasons."""
    items = msg["items"]
    assert 0 < len(items) <= 20, msg
    assert all(0.0 <= i["score"] <= 1.0 and i["reason"] in REASONS for i in items), items
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_end_to_end_taobao_exact(stack: Stack, taobao: Path, tmp_path: Path) -> None:
    """`interest produce` of the real file; every user's interests equal the formula."""
    events = read_taobao(taobao)
    expected = expected_state(events)
    worker = WorkerProc(stack, tmp_path / "w1", "w1").start()
    collector = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready()
        env = stack.env(tmp_path / "producer", free_port())
        done = subprocess.run(
            [sys.executable, "-m", "stream.cli", "produce", str(taobao)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert f"delivered {len(events)} of {len(events)}" in done.stdout
        assert_exact(expected, collector, 120, [worker])
        some_user = next(iter(expected))
        body = http_json(f"{worker.url}/users/{some_user}/recommendations")
        assert body["user_id"] == some_user and body["model_version"] is None
        assert_blended_items(body)
        state = http_json(
            f"{worker.url}/users/{some_user}/interest?at={expected[some_user]['t_ref']}"
        )
        assert state["events_applied"] == expected[some_user]["events"]
        text = worker.metrics()
        assert metric_value(text, "interest_events_total") == sum(
            e["events"] for e in expected.values()
        )
        assert metric_value(text, "interest_event_to_recommendation_seconds_count") > 0
        worker.stop(timeout_s=60)  # SIGTERM: every table record delivered, then a clean exit
        assert not (tmp_path / "w1" / RUNNING_MARKER).exists(), (
            "SIGTERM did not stop the worker cleanly\n" + worker.log_tail()
        )
    finally:
        collector.close()
        worker.stop()


def test_workers_join_and_leave_mid_stream(stack: Stack, taobao: Path, tmp_path: Path) -> None:
    """Two workers share the partitions, a third joins, one leaves; states stay exact."""
    events = read_taobao(taobao)
    expected = expected_state(events)
    records = taobao_records(events)
    thirds = [
        records[: len(records) // 3],
        records[len(records) // 3 : 2 * len(records) // 3],
        records[2 * len(records) // 3 :],
    ]
    w1 = WorkerProc(stack, tmp_path / "w1", "w1").start()
    w2 = WorkerProc(stack, tmp_path / "w2", "w2").start()
    collector = Collector(stack.bootstrap, stack.recommendations)
    workers = [w1, w2]
    try:
        w1.wait_ready()
        w2.wait_ready()
        produce(stack.bootstrap, stack.events, thirds[0], rate=3000)
        w3 = WorkerProc(stack, tmp_path / "w3", "w3").start()
        workers.append(w3)
        producer = threading.Thread(
            target=produce, args=(stack.bootstrap, stack.events, thirds[1], 1500)
        )
        producer.start()
        w3.wait_ready(120)
        producer.join()
        w1.stop()
        produce(stack.bootstrap, stack.events, thirds[2], rate=3000)
        assert_exact(expected, collector, 180, workers)
    finally:
        collector.close()
        for w in workers:
            w.stop()


@pytest.mark.parametrize("keep_data_dir", [True, False], ids=["with-data-dir", "data-dir-deleted"])
def test_kill9_mid_stream_loses_and_doubles_nothing(
    stack: Stack, taobao: Path, tmp_path: Path, keep_data_dir: bool
) -> None:
    events = read_taobao(taobao)
    expected = expected_state(events)
    records = taobao_records(events)
    worker = WorkerProc(stack, tmp_path / "w1", "w1").start()
    collector = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready()
        producer = threading.Thread(
            target=produce, args=(stack.bootstrap, stack.events, records, 2500)
        )
        producer.start()
        wait_for(lambda: len(collector.latest) >= 20, 60, "no recommendations before the kill")
        worker.kill9()
        if not keep_data_dir:
            shutil.rmtree(worker.data_dir)
        worker = WorkerProc(stack, worker.data_dir, "w1-restarted").start()
        producer.join()
        worker.wait_ready(120)
        assert_exact(expected, collector, 180, [worker])
    finally:
        collector.close()
        worker.stop()


def test_bad_records_go_to_dlq_and_duplicates_are_skipped(stack: Stack, tmp_path: Path) -> None:
    worker = WorkerProc(stack, tmp_path / "w1", "w1").start()
    dlq = Collector(stack.bootstrap, stack.dlq)
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready()
        bad = defective_records("u-bad")
        good = [
            (
                b"u-good",
                json.dumps(
                    {
                        "user_id": "u-good",
                        "item_id": f"i{n}",
                        "type": "click",
                        "ts": 1_700_000_000_000 + n,
                        "event_id": f"e{n}",
                        "category": "c1",
                    }
                ).encode(),
            )
            for n in range(5)
        ]
        duplicate = good[2]
        produce(
            stack.bootstrap,
            stack.events,
            [*good[:3], *[(k, v) for k, v, _ in bad], duplicate, *good[3:], duplicate],
        )
        wait_for(
            lambda: len(dlq.messages) >= len(bad),
            60,
            lambda: f"DLQ has {len(dlq.messages)} of {len(bad)}",
        )
        reasons = sorted(m["reason"] for m in dlq.messages)
        assert reasons == sorted(r for *_, r in bad)
        for m in dlq.messages:
            assert {"reason", "detail", "topic", "partition", "offset", "original"} <= set(m)
            assert m["topic"] == stack.events and m["detail"]
        wait_for(
            lambda: recs.latest.get("u-good", {}).get("events_applied") == 5,
            60,
            "u-good not applied",
        )
        text = worker.metrics()
        assert metric_value(text, "interest_events_duplicate_total") == 2
        assert metric_value(text, "interest_events_rejected_total") == len(bad)
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        dlq.close()
        recs.close()
        worker.stop()


def test_rekeys_records_with_a_foreign_key(stack: Stack, tmp_path: Path) -> None:
    """Records keyed by something else still fold into one state per user."""
    worker = WorkerProc(stack, tmp_path / "w1", "w1").start()
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready()
        records = [
            (
                f"k{n}".encode() if n % 2 else None,
                json.dumps(
                    {
                        "user_id": "u-rekey",
                        "item_id": f"i{n}",
                        "type": "browse",
                        "ts": 1_700_000_000_000 + n,
                        "category": "c",
                    }
                ).encode(),
            )
            for n in range(12)
        ]
        produce(stack.bootstrap, stack.events, records)
        wait_for(
            lambda: recs.latest.get("u-rekey", {}).get("events_applied") == 12,
            60,
            lambda: f"u-rekey: {recs.latest.get('u-rekey')}\n{worker.log_tail()}",
        )
    finally:
        recs.close()
        worker.stop()


class HangingServer:
    """Accepts connections and never answers: a scorer that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("failure", ["refused", "hanging"])
def test_failing_scorer_never_stalls_state_updates(
    stack: Stack, tmp_path: Path, failure: str
) -> None:
    server = HangingServer() if failure == "hanging" else None
    port = server.port if server else free_port()
    worker = WorkerProc(
        stack,
        tmp_path / "w1",
        "w1",
        INTEREST_SCORER="tfserving",
        INTEREST_TFSERVING_URL=f"http://127.0.0.1:{port}",
        INTEREST_SCORER_TIMEOUT_MS="500",
    ).start()
    try:
        worker.wait_ready()
        records = [
            (
                b"u-s",
                json.dumps(
                    {
                        "user_id": "u-s",
                        "item_id": f"i{n}",
                        "type": "click",
                        "ts": 1_700_000_000_000 + n,
                        "category": "c",
                    }
                ).encode(),
            )
            for n in range(30)
        ]
        produce(stack.bootstrap, stack.events, records[:10])
        wait_for(
            lambda: metric_value(worker.metrics(), "interest_scorer_errors_total") >= 1,
            60,
            "no scorer error counted",
        )
        produce(stack.bootstrap, stack.events, records[10:])
        wait_for(
            lambda: (
                (http_json(f"{worker.url}/users/u-s/interest") or {}).get("events_applied") == 30
            ),
            60,
            lambda: f"state did not advance while the scorer failed:\n{worker.log_tail()}",
        )
        assert metric_value(worker.metrics(), "interest_recommendations_published_total") == 0
    finally:
        worker.stop()
        if server:
            server.close()


def test_trending_reaches_every_worker_and_single_event_users_get_reasons(
    stack: Stack, tmp_path: Path
) -> None:
    """A category aggregated on one worker is readable on the other; a one-event user gets
    recommendations with reasons from the first event."""
    w1 = WorkerProc(stack, tmp_path / "w1", "w1").start()
    w2 = WorkerProc(stack, tmp_path / "w2", "w2").start()
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        w1.wait_ready()
        w2.wait_ready()
        ts = 1_700_000_000_000
        crowd = [
            (
                f"u{n}".encode(),
                json.dumps(
                    {
                        "user_id": f"u{n}",
                        "item_id": f"hot{n % 3}",
                        "type": "purchase",
                        "ts": ts + n,
                        "category": f"cat{n % 4}",
                    }
                ).encode(),
            )
            for n in range(40)
        ]
        produce(stack.bootstrap, stack.events, crowd)
        for category in ("cat0", "cat1", "cat2", "cat3"):
            for worker in (w1, w2):
                wait_for(
                    lambda w=worker, c=category: (http_json(f"{w.url}/trending/{c}") or {}).get(
                        "items"
                    ),
                    60,
                    lambda w=worker, c=category: f"{c} not visible on {w.name}:\n{w.log_tail()}",
                )
        owned = {w.name: set(w.health()["active_partitions"]) for w in (w1, w2)}
        partitions = {UserPartitioner(stack.partitions)(f"cat{n}") for n in range(4)}
        assert all(partitions - mine for mine in owned.values()), (partitions, owned)
        hot = http_json(f"{w1.url}/trending/cat0")["items"]
        assert (
            set(hot) <= {"hot0", "hot1", "hot2"}
            and hot == http_json(f"{w2.url}/trending/cat0")["items"]
        )
        single = json.dumps(
            {
                "user_id": "newbie",
                "item_id": "hot0",
                "type": "browse",
                "ts": ts + 100,
                "category": "cat0",
            }
        )
        produce(stack.bootstrap, stack.events, [(b"newbie", single.encode())])
        msg = wait_for(
            lambda: recs.latest.get("newbie"), 60, "no recommendation for a one-event user"
        )
        assert_blended_items(msg)
        assert {i["reason"] for i in msg["items"]} & {"trending_in_category", "popular"}
    finally:
        recs.close()
        w1.stop()
        w2.stop()


def test_partition_count_mismatch_fails_at_start(stack: Stack, tmp_path: Path) -> None:
    """An events topic with another partition count would move users: refuse, naming it."""
    from tests.support.helpers import create_topic

    create_topic(stack.bootstrap, stack.events, partitions=stack.partitions + 1)
    env = stack.env(tmp_path / "w", free_port())
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "INTEREST_EVENTS_PARTITIONS" in done.stderr and "Traceback" not in done.stderr
