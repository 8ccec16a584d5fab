"""The apply handler on fetches of records: folds, duplicates, dead letters, re-keying,
trending forwarding and flush thresholds (fakes for the store, the producer and the table)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from faust.types import TP

from stream.config import Settings, event_parser, interest_config
from stream.core.dedup import DedupConfig
from stream.core.interest import item_strengths
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


# ----------------------------------------------------------------- no record stops a partition


def _fold_failing_on(item: str, times: int | None = None) -> Any:
    """fold_batch that folds, then raises if the batch holds ``item`` (states half folded:
    what a bug in the middle of a fold leaves); ``times``: only the first so many times."""
    from stream.core.interest import fold_batch

    calls = {"n": 0}

    def folding(states: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        result = fold_batch(states, batch, *args, **kwargs)
        if item in batch.item_id and (times is None or calls["n"] < times):
            calls["n"] += 1
            raise RuntimeError(f"cannot fold {item}")
        return result

    return folding


def _stream(w: World) -> list[list[FakeRecord]]:
    """Three fetches of four users, the middle one holding the poison."""
    fetches = []
    for f in range(3):
        fetch = [w.record(f"u{n}", f"i{f}-{n}", T0 + 10 * f + n) for n in range(4)]
        if f == 1:
            fetch.insert(2, w.record("u1", "poison", T0 + 15))
        fetches.append(fetch)
    return fetches


def _encoded_states(w: World) -> dict[str, bytes]:
    from stream.core.codec import encode

    w.states.flush()
    return {u: encode(w.states.read(u)) for u in ("u0", "u1", "u2", "u3")}


def test_a_record_that_keeps_failing_is_dead_lettered_and_the_others_are_exact(
    monkeypatch: Any,
) -> None:
    reference = World()
    for fetch in _stream(reference):
        reference.apply([r for r in fetch if b"poison" not in r.value])
    w = World()
    monkeypatch.setattr("stream.worker.apply.fold_batch", _fold_failing_on("poison"))
    fetches = _stream(w)
    for fetch in fetches:
        w.apply(fetch)
    [dead] = [orjson.loads(r.value) for r in w.producer.on("dlq")]
    poison = fetches[1][2]
    assert dead["reason"] == "unprocessable" and dead["offset"] == poison.offset
    assert "RuntimeError: cannot fold poison" in dead["detail"]
    assert _encoded_states(w) == _encoded_states(reference)  # half a fold rolled back
    # every offset, the poison's included, is acknowledged once the flush is delivered
    acked: dict[int, int] = {}
    for marks in w.acked:
        for tp, offset in marks.items():
            acked[tp.partition] = max(acked.get(tp.partition, -1), offset)
    assert acked == w.high_water()


def test_a_failure_that_passes_is_retried_not_dead_lettered(monkeypatch: Any) -> None:
    reference = World()
    for fetch in _stream(reference):
        reference.apply(fetch)
    w = World()
    monkeypatch.setattr("stream.worker.apply.fold_batch", _fold_failing_on("poison", times=2))
    for fetch in _stream(w):
        w.apply(fetch)
    assert w.producer.on("dlq") == []
    # one record at a time rounds to float32 after each event instead of once per fetch
    for user in ("u0", "u1", "u2", "u3"):
        got, want = w.states.read(user), reference.states.read(user)
        assert (got.events_applied, got.offsets) == (want.events_applied, want.offsets)
        for horizon in (0, 1):
            assert item_strengths(got, horizon) == pytest.approx(
                item_strengths(want, horizon), rel=1e-6
            )
    forwarded = [row for r in w.producer.on("by-category") for row in orjson.loads(r.value)]
    # a rebuilt fetch forwards nothing again; the isolated one forwards each record once more
    assert sum(1 for row in forwarded if row[1] == "poison") == 1


def test_a_dead_letter_that_cannot_be_produced_is_unprocessable_not_a_crash() -> None:
    """The contract's poison: producing a rejection fails (librdkafka's size check)."""
    w = World()
    real_produce = w.producer.produce

    def produce(topic: str, value: bytes | None = None, *args: Any, **kwargs: Any) -> None:
        if topic == "dlq" and value is not None and b"empty_id" in value:
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        real_produce(topic, value, *args, **kwargs)

    w.producer.produce = produce  # type: ignore[method-assign]
    bad = w.record("u1", "", T0, raw=b'{"user_id": "u1", "item_id": "", "type": "click"}')
    good = w.record("u2", "i1", T0)
    w.apply([bad, good])
    [dead] = [orjson.loads(r.value) for r in w.producer.on("dlq")]
    assert dead["reason"] == "unprocessable" and dead["offset"] == bad.offset
    assert "MSG_SIZE_TOO_LARGE" in dead["detail"]
    assert w.states.read("u2").events_applied == 1


def test_a_storage_failure_stops_the_worker_and_blames_no_record() -> None:
    from stream.core.errors import StorageFailed

    w = World(flush_after=1)

    def broken(*_: Any, **__: Any) -> None:
        raise Exception("IO error: No space left on device")  # what rocksdict raises

    for db in [w.table.data._db_for_partition(p) for p in range(PARTITIONS)]:
        db.write = broken  # type: ignore[method-assign]
    try:
        w.apply([w.record("u1", "i1", T0)])
    except StorageFailed as exc:
        assert "No space left on device" in str(exc)
    else:
        raise AssertionError("a failed RocksDB write must stop the worker")
    assert w.producer.on("dlq") == []
