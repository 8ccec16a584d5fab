"""The command line against brokers that do not answer, and the local broker's commands, as
a user meets them: real `interest` processes, one line per failure, bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.tools import broker
from tests.support.helpers import REPO, create_topic

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT_S = 3
#: Python start-up and imports (a loaded 2-core machine) on top of the connect timeout.
BOUND_S = CONNECT_TIMEOUT_S + 27


def _interest(
    *args: str, env: dict[str, str] | None = None, timeout: float = 150
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - started


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")}
    return {**env, **extra}


@pytest.fixture
def closed_address() -> str:
    """127.0.0.1 on a port nothing listens on."""
    return f"127.0.0.1:{broker.free_port()}"


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["tail"],
        ["produce", "{events}"],
        ["demo"],
    ],
    ids=lambda c: c[0],
)
def test_a_broker_that_does_not_answer_is_one_line_and_a_bounded_exit(
    command: list[str], closed_address: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "u1", "item_id": "i1", "type": "click"}\n')
    args = [a.format(events=events) for a in command]
    if command == ["worker"]:
        args += ["--data-dir", str(tmp_path / "state")]
    if command == ["demo"]:
        args += ["--work-dir", str(tmp_path / "demo")]
    env = _env(
        INTEREST_KAFKA_BOOTSTRAP=closed_address,
        INTEREST_KAFKA_CONNECT_TIMEOUT_S=str(CONNECT_TIMEOUT_S),
    )
    done, seconds = _interest(*args, env=env, timeout=BOUND_S + 30)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert seconds < BOUND_S
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, done.stderr
    assert closed_address in lines[-1] and f"within {CONNECT_TIMEOUT_S} s" in lines[-1]
    assert lines[-1].startswith("error: no Kafka broker answers")
    assert "INTEREST_KAFKA_BOOTSTRAP" in lines[-1] and "interest kafka status" in lines[-1]
    assert "FAIL" not in done.stderr and "Connection refused (after" not in done.stderr


@pytest.fixture
def own_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a user with their own cache and data homes (the broker registry is
    theirs alone) that still has the jars: the real jar cache is linked in."""
    jars = broker.fetch(log=lambda _m: None).parent  # fetched once per machine
    cache = tmp_path / "cache"
    (cache / "interest-stream").mkdir(parents=True)
    (cache / "interest-stream" / jars.name).symlink_to(jars, target_is_directory=True)
    return _env(XDG_CACHE_HOME=str(cache), XDG_DATA_HOME=str(tmp_path / "share"))


@pytest.mark.slow
def test_status_and_down_find_a_broker_started_with_any_data_dir(
    own_user_cache: dict[str, str], tmp_path: Path
) -> None:
    env = own_user_cache
    data_dir = tmp_path / "somewhere" / "kafka"
    port = broker.free_port()
    try:
        started, _ = _interest(
            "kafka", "up", "--port", str(port), "--data-dir", str(data_dir), env=env
        )
        assert started.returncode == 0, started.stderr
        status, _ = _interest("kafka", "status", env=env)
        assert status.returncode == 0, status.stdout
        assert f"127.0.0.1:{port}" in status.stdout and str(data_dir) in status.stdout
        stopped, _ = _interest("kafka", "down", env=env)
    finally:
        broker.down(data_dir)  # whatever happened above, no broker is left behind
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"stopped the broker at 127.0.0.1:{port}")
    assert str(data_dir) in stopped.stdout
    assert not broker.port_in_use(port)
    gone, _ = _interest("kafka", "status", env=env)
    assert gone.returncode == 1 and "not running" in gone.stdout
    again, _ = _interest("kafka", "down", env=env)
    assert again.returncode == 0 and "not running" in again.stdout


def test_kafka_tool_topics_lists_a_created_topic(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("tool"))
    done, _ = _interest("kafka", "tool", "topics", "--bootstrap-server", kafka_bootstrap, "--list")
    assert done.returncode == 0, done.stderr
    assert topic in done.stdout.splitlines()


def test_kafka_tool_console_consumer_reads_records_and_keeps_stdout_clean(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    from confluent_kafka import Producer

    topic = create_topic(kafka_bootstrap, unique_topic("dlq"))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, value=b'{"reason": "invalid_json"}')
    assert producer.flush(30) == 0
    done, _ = _interest(
        "kafka",
        "tool",
        "kafka-console-consumer.sh",
        "--bootstrap-server",
        kafka_bootstrap,
        "--topic",
        topic,
        "--from-beginning",
        "--max-messages",
        "1",
        "--timeout-ms",
        "30000",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['{"reason": "invalid_json"}']
