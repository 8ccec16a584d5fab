"""Session-wide test fixtures: the real Kafka broker, topic names, bounded waits, data paths.

The broker is the same one ``interest kafka up`` runs (stream/broker.py), started once per
session on a free port in a temporary directory, and only when a test asks for it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.tools import broker
from tests.support.helpers import SHARED_DATA, create_topic, wait_for

__all__ = ["create_topic", "wait_for"]

BROKER_START_TIMEOUT_S = 120.0
BROKER_START_ATTEMPTS = 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the broker is an integration test, marked or not, so that
    ``-m "not integration"`` never starts a JVM."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real single-node Kafka broker for the whole session.

    ``INTEREST_TEST_BOOTSTRAP`` points the tests at a broker you run yourself instead (faster
    when iterating: ``interest kafka up --port 19092``). Otherwise a broker is started from the
    cached jars and stopped (SIGTERM, then SIGKILL) at the end of the session.
    """
    external = os.environ.get("INTEREST_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    # Brokers of earlier sessions that were killed (kill -9, CI timeout) are stopped first;
    # the basetemp's parent holds the last few sessions' temporary directories.
    broker.reap_orphans(tmp_path_factory.getbasetemp().parent)
    data_dir = tmp_path_factory.mktemp("kafka")
    info = _start_broker(data_dir)
    try:
        yield info.bootstrap
    finally:
        broker.down(data_dir)


def _start_broker(data_dir: Path) -> broker.BrokerInfo:
    """Start on a fresh free port, retrying if another process grabs the port first."""
    last: broker.BrokerError | None = None
    for _ in range(BROKER_START_ATTEMPTS):
        port = broker.free_port()
        try:
            return broker.start(
                port, data_dir, timeout_s=BROKER_START_TIMEOUT_S, log=_quiet, owner_pid=os.getpid()
            )
        except broker.BrokerError as exc:
            last = exc
            if "already in use" not in str(exc):
                break
    pytest.fail(f"could not start the test Kafka broker: {last}", pytrace=False)


def _quiet(_message: str) -> None:
    """Broker progress messages are noise in test output."""


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of topic names unique to this test and this run: ``prefix-testname-uuid8``.

    Tests share one broker, so every test uses its own topics (and consumer groups) and never
    sees another test's data, in any order and on reruns.
    """
    test_name = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name)[:80]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test_name}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def shared_data() -> Path:
    """``shared/data`` beside the checkout (data sets too big for the repository)."""
    path = SHARED_DATA
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} is absent")
    return path
