"""The trending aggregation's worker side: folds per category batch, deduplicated by source
position, snapshots published for changed categories only, and the follower's view."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.types import TP

from stream.core.codec import decode_trend
from stream.core.trending import TrendConfig
from stream.worker.trends import TrendAggregator, TrendingFollower
from tests.support.fakes import FakeProducer, FakeRecord, FakeTable, fake_writer

T0 = 1_700_000_000_000


def aggregator() -> tuple[TrendAggregator, FakeTable, FakeProducer, list[Any]]:
    acked: list[Any] = []
    table, producer = FakeTable(), FakeProducer()
    writer = fake_writer(producer, acked.append)
    agg = TrendAggregator(table, "trends-changelog", writer, "snapshots", TrendConfig())
    return agg, table, producer, acked


def snapshots(producer: FakeProducer) -> list[tuple[bytes, dict[str, Any]]]:
    return [(r.key, orjson.loads(r.value)) for r in producer.on("snapshots")]


def rows(*items: tuple[str, int]) -> bytes:
    """Forwarded entries: user, item, type, ts, weight, source partition, source offset."""
    return orjson.dumps([["u", item, "click", T0, 2.0, 0, offset] for item, offset in items])


def test_batches_are_folded_per_round_once_per_category_and_replays_skipped() -> None:
    agg, table, _, acked = aggregator()
    batch = [
        FakeRecord("by-cat", 1, 0, b"c1", rows(("i1", 10), ("i2", 11))),
        FakeRecord("by-cat", 1, 1, b"c1", rows(("i1", 12))),
    ]
    asyncio.run(agg.fold(batch))
    assert table.get(b"c1") is None and acked == []  # collected, not yet folded
    asyncio.run(agg.publish())
    trend = decode_trend(table.get(b"c1"))
    assert trend.items["i1"][1] == 4.0 and trend.items["i2"][1] == 2.0
    assert acked == [{TP("by-cat", 1): 1}]
    asyncio.run(agg.fold([FakeRecord("by-cat", 1, 2, b"c1", rows(("i1", 12)))]))  # a replay
    asyncio.run(agg.publish())
    assert decode_trend(table.get(b"c1")).items["i1"][1] == 4.0


def test_changed_categories_are_published_once_and_a_rebalance_forgets() -> None:
    agg, _, producer, acked = aggregator()
    asyncio.run(agg.fold([FakeRecord("by-cat", 0, 0, b"c1", rows(("i1", 1)))]))
    asyncio.run(agg.publish())
    asyncio.run(agg.publish())
    [(key, snap)] = snapshots(producer)
    assert key == b"c1" and snap["items"]["i1"] == [2.0, 2.0] and snap["published_at"] > 0
    asyncio.run(agg.fold([FakeRecord("by-cat", 0, 1, b"c2", rows(("i2", 2)))]))
    agg.forget()  # a rebalance: read again by the partition's owner
    asyncio.run(agg.publish())
    assert len(snapshots(producer)) == 1 and acked[-1] == {TP("by-cat", 0): 0}


class _Msg:
    def __init__(self, key: bytes | None, value: bytes | None) -> None:
        self._k, self._v = key, value

    def error(self) -> None:
        return None

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v


class _Consumer:
    def __init__(self, batches: list[list[_Msg]]) -> None:
        self.batches = batches

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def test_the_follower_keeps_the_newest_snapshot_and_honours_tombstones() -> None:
    snap = {"category": "c1", "t_ref": T0, "half_lives": [1, 2], "items": {"i1": [1.0, 1.0]}}
    consumer = _Consumer(
        [
            [
                _Msg(b"c1", orjson.dumps(snap)),
                _Msg(b"c2", orjson.dumps({**snap, "category": "c2"})),
            ],
            [_Msg(b"c2", None)],
        ]
    )
    follower = TrendingFollower(lambda: consumer)
    follower.poll(consumer)
    assert set(follower.view) == {"c1", "c2"}
    follower.poll(consumer)
    assert set(follower.view) == {"c1"}


def test_an_unreadable_record_or_a_failing_category_does_not_stop_the_others() -> None:
    agg, table, _, acked = aggregator()
    rejected: list[tuple[str, int]] = []
    agg.reject = lambda rejection, record: rejected.append((rejection.reason, record.offset))
    batch = [
        FakeRecord("by-cat", 0, 0, b"c1", rows(("i1", 1))),
        FakeRecord("by-cat", 0, 1, b"c2", b"{not json"),
        FakeRecord("by-cat", 0, 2, b"c3", orjson.dumps([["u", "i3", "click", "late", 2.0, 0, 3]])),
    ]
    asyncio.run(agg.fold(batch))
    assert rejected == [("unprocessable", 1)]
    asyncio.run(agg.publish())  # c3's bad timestamp fails its fold: c1 is folded alone
    assert decode_trend(table.get(b"c1")).items["i1"][1] == 2.0
    assert table.get(b"c3") is None
    assert acked == [{TP("by-cat", 0): 2}]  # the partition moves on
