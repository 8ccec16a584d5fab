"""Bad input and replays through the real broker and a real worker: a record the size of
the broker's limit, thousands of defective records of every kind and events older than the
id retention all land in the dead-letter topic with their reason while every other user is
folded exactly; an upstream replay of earlier records at new offsets is applied once."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.support.harness import (
    Collector,
    RawEvent,
    Stack,
    WorkerProc,
    defective_records,
    events_fully_applied,
    expected_state,
    http_json,
    interest_mismatches,
    metric_value,
    produce,
    read_taobao,
    taobao_records,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
DAY_MS = 86_400_000
PER_KIND = 300  # defective records of each of the contract's rejection kinds
TAOBAO = "taobao_userbehavior_114users/UserBehavior.csv"


@pytest.fixture
def stack(kafka_bootstrap: str) -> Stack:
    return Stack(bootstrap=kafka_bootstrap, suffix=uuid.uuid4().hex[:10])


def good_events(users: int, per_user: int, start: int) -> list[RawEvent]:
    behaviors = ("pv", "pv", "cart", "fav", "buy")
    return [
        RawEvent(f"good-{u}", f"i{u}-{n}", f"c{n % 7}", behaviors[n % 5], T0 + start + 1000 * n)
        for n in range(per_user)
        for u in range(users)
    ]


def test_thousands_of_defective_records_and_a_giant_one_never_stop_the_worker(
    stack: Stack, tmp_path: Path
) -> None:
    worker = WorkerProc(stack, tmp_path / "w1", "w1").start()
    dlq = Collector(stack.bootstrap, stack.dlq)
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready()
        before = good_events(40, 10, 0)
        produce(stack.bootstrap, stack.events, taobao_records(before))
        expected = expected_state(before)
        wait_for(lambda: events_fully_applied(expected, recs), 90, "the first good events")

        defective = [record for n in range(PER_KIND) for record in defective_records(f"u-bad-{n}")]
        # events 40 days older than every partition's newest: beyond the 30-day id retention
        old = [
            RawEvent(f"good-{n % 40}", f"old{n}", "c-old", "buy", T0 - 40 * DAY_MS + n)
            for n in range(PER_KIND)
        ]
        giant = json.dumps(
            {
                "user_id": "u-giant",
                "item_id": "i",
                "type": "click",
                "ts": T0,
                "pad": "x" * 1_000_000,
            }
        ).encode()
        after = good_events(40, 10, 100_000)
        stream = [(k, v) for k, v, _ in defective]
        stream[len(stream) // 2 : len(stream) // 2] = [(b"u-giant", giant)]
        stream += taobao_records(old) + taobao_records(after)
        produce(stack.bootstrap, stack.events, stream, config={"message.max.bytes": 1_048_576})

        want = Counter(reason for *_, reason in defective)
        want["too_large"] += 1
        want["beyond_dedup_retention"] += len(old)
        total = sum(want.values())
        wait_for(
            lambda: len(dlq.messages) >= total,
            180,
            lambda: f"DLQ has {len(dlq.messages)} of {total}\n{worker.log_tail()}",
        )
        assert Counter(m["reason"] for m in dlq.messages) == want
        [letter] = [m for m in dlq.messages if m["original_bytes"] == len(giant)]
        assert letter["reason"] == "too_large" and letter["original_truncated"] is True
        assert letter["original_sha256"] == hashlib.sha256(giant).hexdigest()
        assert len(letter["original"].encode()) <= 16_384

        expected = expected_state(before + after)  # the old events are not applied
        wait_for(
            lambda: events_fully_applied(expected, recs),
            120,
            lambda: f"good users after the defective records\n{worker.log_tail()}",
        )
        assert interest_mismatches(expected, recs.latest) == []
        for user in ("u-bad-0", "u-bad-299", "u-giant"):
            assert http_json(f"{worker.url}/users/{user}/interest")["_status"] == 404
        text = worker.metrics()
        assert metric_value(text, "interest_events_rejected_total") == total
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    finally:
        dlq.close()
        recs.close()
        worker.stop()


def test_an_upstream_replay_at_new_offsets_is_applied_once(
    stack: Stack, tmp_path: Path, shared_data: Path
) -> None:
    """The issue's case: earlier records sent again by a restarted upstream, more than 64
    of each user's events back, at new offsets."""
    path = shared_data / TAOBAO
    if not path.exists():
        pytest.skip(f"{path} is absent: this test replays real events")
    events = read_taobao(path)
    users = sorted({e.user_id for e in events})[:30]
    mine = [e for e in events if e.user_id in set(users)]
    worker = WorkerProc(stack, tmp_path / "w1", "w1").start()
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready()
        produce(stack.bootstrap, stack.events, taobao_records(mine))
        expected = expected_state(mine)
        wait_for(lambda: events_fully_applied(expected, recs), 120, "the first pass")
        first = {u: recs.latest[u]["version"] for u in users}

        by_user: dict[str, list[RawEvent]] = {}
        for e in mine:
            by_user.setdefault(e.user_id, []).append(e)
        replay = [e for u in users for e in by_user[u][: max(0, len(by_user[u]) - 64)]]
        assert len(replay) >= 500, "the sample must reach back more than 64 events per user"
        produce(stack.bootstrap, stack.events, taobao_records(replay))

        def duplicates() -> float:
            return metric_value(worker.metrics(), "interest_events_duplicate_total")

        wait_for(
            lambda: duplicates() >= len(replay),
            90,
            lambda: f"duplicates counted: {duplicates()} of {len(replay)}",
        )
        assert duplicates() == len(replay)
        states = {u: http_json(f"{worker.url}/users/{u}/interest") for u in users}
        assert {u: s["events_applied"] for u, s in states.items()} == {
            u: expected[u]["events"] for u in users
        }
        assert interest_mismatches(expected, recs.latest) == []
        assert {u: recs.latest[u]["version"] for u in users} == first  # nothing to republish
    finally:
        recs.close()
        worker.stop()


def test_a_clean_stop_writes_what_it_folded_so_a_restart_reads_nothing_again(
    stack: Stack, tmp_path: Path
) -> None:
    events = good_events(50, 20, 0)
    slow = {"INTEREST_RESCORE_INTERVAL_MS": "3600000"}  # no round flushes: only the stop does
    worker = WorkerProc(stack, tmp_path / "w1", "w1", **slow).start()
    try:
        worker.wait_ready()
        produce(stack.bootstrap, stack.events, taobao_records(events))
        wait_for(
            lambda: metric_value(worker.metrics(), "interest_events_total") >= len(events),
            90,
            "the events applied before the stop",
        )
    finally:
        worker.stop()
    restarted = WorkerProc(stack, tmp_path / "w1", "w1-restarted").start()
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        restarted.wait_ready()
        expected = expected_state(events)
        wait_for(lambda: events_fully_applied(expected, recs), 90, "published after the restart")
        text = restarted.metrics()
        assert metric_value(text, "interest_events_total") == 0  # nothing folded again
        assert metric_value(text, "interest_events_duplicate_total") == 0  # nor read again
        assert interest_mismatches(expected, recs.latest) == []
    finally:
        recs.close()
        restarted.stop()
