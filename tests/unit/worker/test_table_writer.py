"""Epoch bookkeeping of the table writer: an epoch's high-water marks are acked only when
every changelog record produced before its seal is delivered, in order, and a failed
delivery stops the worker."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

from stream.core.errors import DeliveryFailed
from stream.worker.table_writer import TableWriter
from tests.support.fakes import FakeProducer, fake_writer

A, B = TP("events", 0), TP("events", 1)


def _writer() -> tuple[TableWriter, FakeProducer, list[Any]]:
    acked: list[Any] = []
    fake = FakeProducer()
    fake.hold = True  # the test delivers
    return fake_writer(fake, acked.append), fake, acked


def test_ack_waits_for_every_record_of_the_epoch() -> None:
    writer, fake, acked = _writer()
    writer.produce("t", b"k", b"v1")
    writer.produce("t", b"k", b"v2")
    writer.seal({A: 1})
    fake.deliver(1)
    writer.poll()
    assert acked == []
    fake.deliver(0)
    writer.poll()
    assert acked == [{A: 1}]


def test_a_later_epoch_waits_for_an_earlier_one() -> None:
    writer, fake, acked = _writer()
    writer.produce("t", b"k", b"v1")
    writer.seal({A: 1})
    writer.produce("t", b"k", b"v2")
    writer.seal({A: 2, B: 7})
    fake.deliver(1)  # the second epoch's record arrives first
    writer.poll()
    assert acked == []
    fake.deliver(0)
    writer.poll()
    assert acked == [{A: 1}, {A: 2, B: 7}]


def test_an_epoch_without_writes_is_acked_at_once() -> None:
    writer, _, acked = _writer()
    writer.seal({A: 9})
    writer.poll()
    assert acked == [{A: 9}]


def test_failed_delivery_stops_and_acks_nothing() -> None:
    writer, fake, acked = _writer()
    writer.produce("t", b"k", b"v")
    writer.seal({A: 1})
    fake.fail = "broker gone"
    fake.deliver(0)
    with pytest.raises(DeliveryFailed, match="broker gone"):
        writer.poll()
    assert acked == []
