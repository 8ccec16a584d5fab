"""The apply handler on fetches of records: folds, duplicates, dead letters, re-keying,
trending forwarding and flush thresholds (fakes for the store, the producer and the table)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.types import TP

from stream.config import Settings, event_parser, interest_config
from stream.core.dedup import DedupConfig
from stream.core.scheduling import DirtyUsers
from stream.worker.apply import REKEY_SOURCE_BASE, ApplyHandler, Topics
from stream.worker.dedup import DedupStore
from stream.worker.rescore import PublishedLog
from stream.worker.state_store import StateStore, UserPartitioner
from tests.support.fakes import FakeProducer, FakeRecord, FakeTable, fake_writer

T0 = 1_700_000_000_000
PARTITIONS = 4
TOPICS = Topics(rekey="rekey", by_category="by-category", dlq="dlq")


class World:
    """An apply handler over fakes, and what it touched."""

    def __init__(self, flush_after: int = 1000, trending: bool = True) -> None:
        settings = Settings()
        self.producer = FakeProducer()
        self.acked: list[Any] = []
        self.partition_of = UserPartitioner(PARTITIONS)
        self.table = FakeTable()
        writer = fake_writer(self.producer, self.acked.append)
        self.dedup = DedupStore(FakeTable(), "dedup-changelog", writer, DedupConfig())
        self.states = StateStore(
            self.table, "users-changelog", writer, self.partition_of, companions=[self.dedup]
        )
        self.dirty = DirtyUsers()
        self.handler = ApplyHandler(
            lambda: event_parser(settings),
            self.states,
            self.dedup,
            PublishedLog(FakeTable(), UserPartitioner(4)),
            self.dirty,
            self.states.writer,  # the table writer produces the handler's records too
            TOPICS,
            interest_config(settings),
            vectors=lambda: None,
            partition_of=self.partition_of,
            trending=trending,
            flush_after=flush_after,
        )
        self.offset = 0
        self.seen: list[FakeRecord] = []

    def record(
        self, user: str, item: str, ts: int, *, key: str | None = None, raw: bytes | None = None
    ) -> FakeRecord:
        value = raw or orjson.dumps(
            {"user_id": user, "item_id": item, "type": "click", "ts": ts, "category": "c1"}
        )
        self.offset += 1
        return FakeRecord(
            "events",
            self.partition_of(user),
            self.offset,
            (key if key is not None else user).encode(),
            value,
            ts,
        )

    def apply(self, records: list[FakeRecord]) -> None:
        self.seen.extend(records)
        asyncio.run(self.handler(records))

    def high_water(self) -> dict[int, int]:
        marks: dict[int, int] = {}
        for r in self.seen:
            marks[r.partition] = max(marks.get(r.partition, -1), r.offset)
        return marks


def test_events_fold_into_states_and_mark_users_dirty() -> None:
    w = World()
    w.apply([w.record("u1", "i1", T0), w.record("u1", "i2", T0 + 1), w.record("u2", "i1", T0)])
    u1 = w.states.read("u1")
    assert u1 is not None and u1.events_applied == 2 and set(u1.items) == {"i1", "i2"}
    assert w.dirty.count() == 2
    assert w.states.unsaved == {"u1": w.partition_of("u1"), "u2": w.partition_of("u2")}


def test_a_replayed_record_is_a_duplicate_and_not_dirty_again() -> None:
    w = World()
    first = w.record("u1", "i1", T0)
    w.apply([first])
    w.dirty.take(range(PARTITIONS), 10)
    w.states.unsaved.clear()
    w.apply([first])  # the same offset again (a crash replay)
    assert w.states.read("u1").events_applied == 1
    assert w.states.unsaved == {}


def test_bad_records_go_to_the_dead_letter_topic_with_their_reason() -> None:
    w = World()
    good = w.record("u1", "i1", T0)
    bad = w.record("u1", "", T0, raw=b'{"user_id": "u1", "item_id": "", "type": "click"}')
    junk = w.record("u2", "", T0, raw=b"\xff\xfe not json")
    w.apply([good, bad, junk])
    dead = [orjson.loads(r.value) for r in w.producer.on("dlq")]
    assert [d["reason"] for d in dead] == ["empty_id", "invalid_utf8"]
    assert dead[0]["offset"] == bad.offset and dead[0]["original"] == bad.value.decode()
    assert w.states.read("u1").events_applied == 1


def test_a_record_keyed_by_someone_else_is_rekeyed_not_applied() -> None:
    w = World()
    foreign = w.record("u1", "i1", T0, key="not-u1")
    w.apply([foreign])
    assert w.states.read("u1") is None
    [sent] = w.producer.on("rekey")
    assert sent.key == b"u1" and sent.value == foreign.value
    rekeyed = FakeRecord("rekey", w.partition_of("u1"), 0, b"u1", foreign.value, T0)
    w.apply([rekeyed])
    state = w.states.read("u1")
    assert state.events_applied == 1 and state.offsets == {
        w.partition_of("u1") + REKEY_SOURCE_BASE: 0
    }


def test_applied_events_are_forwarded_per_category() -> None:
    w = World()
    w.apply([w.record("u1", "i1", T0), w.record("u2", "i2", T0 + 5)])
    [forwarded] = w.producer.on("by-category")
    assert forwarded.key == b"c1"
    rows = orjson.loads(forwarded.value)
    assert sorted(r[1] for r in rows) == ["i1", "i2"]
    w2 = World(trending=False)
    w2.apply([w2.record("u1", "i1", T0)])
    assert w2.producer.on("by-category") == []


def test_states_are_written_once_enough_records_wait() -> None:
    w = World(flush_after=3)
    w.apply([w.record("u1", "i1", T0), w.record("u1", "i2", T0 + 1)])
    assert w.producer.on("users-changelog") == []
    w.apply([w.record("u2", "i1", T0)])
    assert {r.key for r in w.producer.on("users-changelog")} == {b"u1", b"u2"}
    # the flush's records, by their high-water marks, once its writes were delivered
    assert w.acked == [{TP("events", p): o for p, o in w.high_water().items()}]


def test_an_id_sent_again_at_a_new_offset_is_a_duplicate_however_much_later() -> None:
    w = World(flush_after=1)
    first = w.record("u1", "i1", T0)
    w.apply([first])
    w.apply([w.record("u1", f"other{n}", T0 + n) for n in range(1, 200)])  # 199 events later
    again = FakeRecord("events", first.partition, 10_000, first.key, first.value, T0)
    w.apply([again])  # an upstream replay: same event, new offset
    state = w.states.read("u1")
    assert state.events_applied == 200
    assert len(w.producer.on("dedup-changelog")) >= 200  # the ids, written with the states


def test_an_event_older_than_the_id_retention_is_dead_lettered() -> None:
    w = World()
    w.apply([w.record("u1", "i1", T0)])
    old = w.record("u1", "i2", T0 - 8 * 86_400_000)
    w.apply([old])
    [dead] = [orjson.loads(r.value) for r in w.producer.on("dlq")]
    assert dead["reason"] == "beyond_dedup_retention" and dead["offset"] == old.offset
    assert w.states.read("u1").events_applied == 1


def test_old_ids_are_forgotten_a_slice_at_a_time() -> None:
    """Retention is per partition, from its newest event time (one user: one partition)."""
    w = World(flush_after=1)
    day = 86_400_000
    w.apply([w.record("u", f"i{n}", T0 + n) for n in range(30)])
    w.apply([w.record("u", "late", T0 + 6 * day)])
    w.apply([w.record("u", "newest", T0 + 7 * day + 1000)])  # the first 30 are now too old
    dbs = w.dedup.table.data._dbs
    stored = sum(len(db.data) for db in dbs.values())
    deleted = 0
    for _ in range(10):  # a budget of 4 entries per partition per sweep
        deleted += w.dedup.expire(set(dbs), budget=4)
    assert deleted == 30
    left = sum(len(db.data) for db in dbs.values())
    assert left == stored - 30  # the two recent ids and the watermarks stay
