"""Epoch bookkeeping of the table writer: a record is acked only when every changelog record
produced before its seal is delivered, in order, and a failed delivery stops the worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stream.settings import load_settings
from stream.table_writer import DeliveryFailed, TableWriter


class _Delivered:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class _Producer:
    """Holds produced records until the test delivers them (librdkafka is not involved)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, int, Callable[[Any, Any], None]]] = []
        self.offset = 0

    def produce(self, topic: str, value: Any, key: Any, partition: int, on_delivery: Any) -> None:
        self.pending.append((topic, partition, on_delivery))

    def deliver(self, index: int, err: Any = None) -> None:
        topic, partition, callback = self.pending.pop(index)
        self.offset += 1
        callback(err, _Delivered(topic, partition, self.offset))

    def poll(self, _timeout: float) -> int:
        return 0


def _writer() -> tuple[TableWriter, _Producer, list[Any]]:
    acked: list[Any] = []
    writer = TableWriter(load_settings(None, {}), ack=acked.append)
    fake = _Producer()
    writer.producer = fake  # type: ignore[assignment]
    return writer, fake, acked


def test_ack_waits_for_every_record_of_the_epoch() -> None:
    writer, fake, acked = _writer()
    writer.produce("t", b"k", b"v1")
    writer.produce("t", b"k", b"v2")
    writer.seal(["a"])
    fake.deliver(1)
    writer.poll()
    assert acked == []
    fake.deliver(0)
    writer.poll()
    assert acked == ["a"]


def test_a_later_epoch_waits_for_an_earlier_one() -> None:
    writer, fake, acked = _writer()
    writer.produce("t", b"k", b"v1")
    writer.seal(["first"])
    writer.produce("t", b"k", b"v2")
    writer.seal(["second"])
    fake.deliver(1)  # the second epoch's record arrives first
    writer.poll()
    assert acked == []
    fake.deliver(0)
    writer.poll()
    assert acked == ["first", "second"]


def test_an_epoch_without_writes_is_acked_at_once() -> None:
    writer, _, acked = _writer()
    writer.seal(["only-rejected"])
    writer.poll()
    assert acked == ["only-rejected"]


def test_failed_delivery_stops_and_acks_nothing() -> None:
    writer, fake, acked = _writer()
    writer.produce("t", b"k", b"v")
    writer.seal(["a"])
    fake.deliver(0, err="broker gone")
    with pytest.raises(DeliveryFailed, match="broker gone"):
        writer.poll()
    assert acked == []
