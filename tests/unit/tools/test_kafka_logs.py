"""librdkafka's log lines through Python logging (deduplicated, rate-limited) and the bounded
broker reachability check every command makes (stream/worker/kafka_clients.py)."""

from __future__ import annotations

import logging
import time

import pytest

from stream.config import load_settings
from stream.core.errors import Unreachable
from stream.tools.broker import free_port
from stream.worker.kafka_clients import (
    KAFKA_LOGGER,
    LibrdkafkaLog,
    _LastLine,
    check_reachable,
    confluent_config,
    kafka_log,
)

FMT = "%s [%s] %s"  # what confluent-kafka passes to logger.log


def refused(ms: int, client: str = "rdkafka#producer-1") -> tuple[str, str, str]:
    text = (
        "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
        f"failed: Connection refused (after {ms}ms in state CONNECT)"
    )
    return ("FAIL", client, text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bridge(caplog: pytest.LogCaptureFixture) -> tuple[LibrdkafkaLog, Clock]:
    caplog.set_level(logging.DEBUG, logger=KAFKA_LOGGER)
    clock = Clock()
    return LibrdkafkaLog(logging.getLogger(KAFKA_LOGGER), interval_s=60, clock=clock), clock


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == KAFKA_LOGGER]


def test_a_repeated_line_is_logged_once_per_interval_with_the_suppressed_count(
    bridge: tuple[LibrdkafkaLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = bridge
    for i in range(300):  # librdkafka retries a refused connection several times a second
        log.log(logging.ERROR, FMT, *refused(i % 3, client=f"rdkafka#consumer-{i % 2}"))
        clock.now += 0.1
    # 300 calls over 30 s: one line
    assert len(lines(caplog)) == 1
    first = lines(caplog)[0]
    assert first.startswith("librdkafka FAIL: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1")
    assert "[thrd:" not in first and "rdkafka#" not in first
    clock.now += 31  # past the interval: the next one is logged, with what was held back
    log.log(logging.ERROR, FMT, *refused(5))
    assert len(lines(caplog)) == 2
    assert "(299 more like it in the last 60 s, not shown)" in lines(caplog)[1]
    log.log(logging.ERROR, FMT, *refused(5))
    assert len(lines(caplog)) == 2


def test_different_lines_are_not_merged(
    bridge: tuple[LibrdkafkaLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, _ = bridge
    log.log(logging.ERROR, FMT, *refused(0))
    log.log(logging.ERROR, FMT, "FAIL", "c", "10.0.0.2:9092/1: Disconnected (after 12ms)")
    log.log(logging.WARNING, FMT, "SASL", "c", "Authentication failed")
    log.log(logging.ERROR, FMT, "ERROR", "c", "Connection refused")  # another facility
    assert len(lines(caplog)) == 4


def test_levels_keep_a_healthy_run_quiet(
    bridge: tuple[LibrdkafkaLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, _ = bridge
    log.log(logging.INFO, FMT, "CONFWARN", "c", "informational")
    log.log(logging.ERROR, FMT, *refused(0))
    log.log(logging.CRITICAL, FMT, "FATAL", "c", "fatal error")
    levels = {r.getMessage().split(":")[0]: r.levelno for r in caplog.records}
    assert levels == {
        "librdkafka CONFWARN": logging.DEBUG,  # notices and infos: DEBUG
        "librdkafka FAIL": logging.WARNING,  # retried connection errors: WARNING
        "librdkafka FATAL": logging.CRITICAL,
    }


def test_lines_below_the_level_are_neither_logged_nor_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=KAFKA_LOGGER)
    clock = Clock()
    log = LibrdkafkaLog(logging.getLogger(KAFKA_LOGGER), interval_s=60, clock=clock)
    log.log(logging.ERROR, FMT, *refused(0))
    assert lines(caplog) == []


def test_the_rate_limit_remembers_a_bounded_number_of_lines(
    bridge: tuple[LibrdkafkaLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    _, clock = bridge
    log = LibrdkafkaLog(logging.getLogger(KAFKA_LOGGER), interval_s=60, max_keys=3, clock=clock)
    for n in range(10):
        log.log(logging.ERROR, FMT, "FAIL", "c", f"broker{n}:9092/1: Connection refused")
    assert len(log._seen) == 3
    assert len(lines(caplog)) == 10


def test_every_confluent_client_config_routes_logs_through_the_bridge() -> None:
    settings = load_settings()
    assert confluent_config(settings)["logger"] is kafka_log()
    probe = _LastLine()
    assert confluent_config(settings, logger=probe)["logger"] is probe


def test_the_probe_extracts_the_cause() -> None:
    probe = _LastLine()
    probe.log(logging.ERROR, FMT, *refused(3))
    assert probe.reason() == "Connection refused"
    probe.log(
        logging.ERROR,
        FMT,
        "FAIL",
        "c",
        "nohost:9092/bootstrap: Failed to resolve 'nohost:9092': Name or service not known "
        "(after 4ms in state CONNECT)",
    )
    assert probe.reason() == "Failed to resolve 'nohost:9092': Name or service not known"


def test_an_unreachable_broker_is_one_bounded_error_naming_the_address(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("INTEREST_KAFKA_BOOTSTRAP", address)
    monkeypatch.setenv("INTEREST_KAFKA_CONNECT_TIMEOUT_S", "0.5")
    settings = load_settings()
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        check_reachable(settings)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert address in message and "within 0.5 s" in message
    assert "INTEREST_KAFKA_BOOTSTRAP" in message and "interest kafka status" in message
    assert "Connection refused" in message
    assert "\n" not in message
    assert "FAIL" not in capfd.readouterr().err  # librdkafka printed nothing itself
