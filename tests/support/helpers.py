"""Test helpers shared by unit and integration tests: bounded waits, topics, paths."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"  # real data sets, beside the checkout


def poll_until(
    predicate: Callable[[], T],
    timeout_s: float,
    message: str | Callable[[], str],
    interval_s: float = 0.05,
    *,
    error: Callable[[str], BaseException] = TimeoutError,
    reraise: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value; after
    ``timeout_s`` raise ``error("timed out after ...: <message>")``.

    An exception raised by the predicate counts as "not yet" (the last one is shown on
    timeout), except those in ``reraise``. A callable ``message`` is evaluated only on
    timeout (e.g. to attach a log tail). The benchmarks use it with their own errors."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except reraise:
            raise
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            text = message() if callable(message) else message
            raise error(f"timed out after {timeout_s:g} s: {text}{detail}")
        time.sleep(interval_s)


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float,
    message: str | Callable[[], str],
    interval_s: float = 0.05,
) -> T:
    """:func:`poll_until` failing the test on timeout.

    The only sanctioned way for a test to wait for something asynchronous: it returns as soon
    as the condition holds (fast when the system is fast), is bounded (a hang becomes a
    failure saying what was awaited), and never hides a race behind a fixed sleep.
    """
    return poll_until(predicate, timeout_s, message, interval_s, error=pytest.fail.Exception)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout_s: float = 30,
) -> str:
    """Create a topic with confluent-kafka's AdminClient and wait until every partition has a
    leader, so the caller can produce to it at once. Returns the name."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout_s,
    )
    futures[name].result(timeout=timeout_s)

    def ready() -> bool:
        topic = admin.list_topics(name, timeout=5).topics.get(name)
        if topic is None or topic.error is not None or len(topic.partitions) != partitions:
            return False
        return all(p.leader >= 0 for p in topic.partitions.values())

    wait_for(ready, timeout_s, f"topic {name} to have {partitions} partitions with leaders")
    return name
