"""Fast tests of stream/broker.py's pure parts and its failure messages (no broker started)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.tools import broker


def test_properties_describe_a_single_local_node(tmp_path: Path) -> None:
    text = broker.render_properties(19092, 19093, tmp_path)
    props = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert Path(props["log.dirs"]).parent == tmp_path
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


def test_property_overrides_win(tmp_path: Path) -> None:
    text = broker.render_properties(1, 2, tmp_path, {"auto.create.topics.enable": "true"})
    assert "auto.create.topics.enable=true" in text.splitlines()
    assert "auto.create.topics.enable=false" not in text


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_392"', 8),
        ("no version here", None),
    ],
)
def test_java_version_parsing(output: str, major: int | None) -> None:
    assert broker.parse_java_version(output) == major


def test_port_in_use_detects_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert broker.port_in_use(sock.getsockname()[1])
    assert not broker.port_in_use(broker.free_port())


def test_start_refuses_a_port_in_use(tmp_path: Path) -> None:
    if broker.shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no java: the java check comes first")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(broker.BrokerError, match=f"port {port} .* already in use"):
            broker.start(port, tmp_path / "kafka")
    assert not (tmp_path / "kafka").exists(), "nothing is written before the checks pass"


def test_missing_java_on_path_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(broker.BrokerError, match=r"Java not found: Kafka needs Java 17"):
        broker.up(port=broker.free_port(), data_dir=tmp_path / "kafka", log=lambda _m: None)


def test_java_home_pointing_at_nothing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(broker.BrokerError, match=r"JAVA_HOME is .* not an executable"):
        broker.find_java()


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "jdk8" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'java version \"1.8.0_392\"' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk8"))
    with pytest.raises(broker.BrokerError, match=r"is Java 8; Kafka .* needs Java 17"):
        broker.find_java()


def test_fetch_skips_maven_once_the_cache_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no mvn: must not be needed
    root = broker.cache_dir()
    (root / "libs").mkdir(parents=True)
    (root / broker.COMPLETE_MARKER).write_text(broker.KAFKA_VERSION)
    assert broker.fetch(log=lambda _m: None) == root / "libs"


def test_fetch_without_maven_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(broker.BrokerError, match=r"Maven \(mvn\) is needed .* KAFKA_HOME"):
        broker.fetch(log=lambda _m: None)


def test_kafka_home_gives_its_libs_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-3.9.1.jar").touch()
    (tmp_path / "libs" / "kafka_2.13-3.9.1-test.jar").touch()
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    classpath = broker.resolve_classpath(log=lambda _m: None)
    assert classpath.version == "3.9.1"
    assert classpath.java_arg == str(tmp_path / "libs" / "*")


def test_kafka_home_without_jars_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    with pytest.raises(broker.BrokerError, match="holds no kafka_2"):
        broker.resolve_classpath()


def test_pom_and_module_agree_on_the_kafka_version() -> None:
    pom = broker.POM.read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match is not None and match.group(1) == broker.KAFKA_VERSION


def test_cluster_id_is_16_bytes_of_url_safe_base64() -> None:
    cluster_id = broker.new_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8.. encodes to "-" first: the storage tool would take such an id for an option
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x00" * 16)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).startswith(b"-")
    assert broker.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAA"


def test_status_without_a_broker_is_none_and_cleans_a_stale_pid_file(tmp_path: Path) -> None:
    assert broker.status(tmp_path) is None
    # A pid that is alive but is not our broker (this very process): stale, removed.
    (tmp_path / broker.STATE_FILE).write_text(
        f'{{"pid": {os.getpid()}, "bootstrap": "127.0.0.1:1", "version": "x"}}'
    )
    (tmp_path / broker.PID_FILE).write_text(f"{os.getpid()}\n")
    assert broker.status(tmp_path) is None
    assert not (tmp_path / broker.PID_FILE).exists()
    assert broker.down(tmp_path) is None


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    assert broker.log_tail(log, 3) == "line 47\nline 48\nline 49"
    assert "no broker log" in broker.log_tail(tmp_path / "missing.log")


def test_describe_names_pid_address_version_and_data(tmp_path: Path) -> None:
    info = broker.BrokerInfo(42, "127.0.0.1:9092", tmp_path, "4.4.0", tmp_path / "broker.log")
    assert info.describe().startswith("running (pid 42) at 127.0.0.1:9092, Kafka 4.4.0")
    assert str(tmp_path) in info.describe()


def test_fetch_with_tools_adds_the_tools_jars_to_an_older_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache resolved before the pom named kafka-tools: the broker still starts offline, the
    tools need one more resolve (here: no Maven, so a clear error), then work offline too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    root = broker.cache_dir()
    (root / "libs").mkdir(parents=True)
    (root / broker.COMPLETE_MARKER).write_text(broker.KAFKA_VERSION)
    assert broker.fetch(log=lambda _m: None) == root / "libs"
    with pytest.raises(broker.BrokerError, match=r"Maven \(mvn\) is needed"):
        broker.fetch(log=lambda _m: None, tools=True)
    (root / "libs" / f"kafka-tools-{broker.KAFKA_VERSION}.jar").touch()
    assert broker.fetch(log=lambda _m: None, tools=True) == root / "libs"


def test_pom_fetches_the_tools_without_connect_runtime() -> None:
    pom = broker.POM.read_text()
    assert "<artifactId>kafka-tools</artifactId>" in pom
    assert "<artifactId>connect-runtime</artifactId>" in pom.split("<exclusions>", 1)[1]


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("console-consumer", "console-consumer"),
        ("kafka-console-consumer.sh", "console-consumer"),
        ("kafka-topics", "topics"),
        ("Consumer-Groups", "consumer-groups"),
    ],
)
def test_tool_names_as_the_scripts_spell_them(name: str, short: str) -> None:
    assert broker.tool_name(name) == short


def test_an_unknown_tool_lists_the_known_ones() -> None:
    with pytest.raises(broker.BrokerError, match=r"unknown Kafka tool 'nope'; known: .*topics"):
        broker.tool_name("nope")


def test_the_four_main_tools_map_to_their_kafka_4_classes() -> None:
    assert broker.TOOLS["console-consumer"] == "org.apache.kafka.tools.consumer.ConsoleConsumer"
    assert broker.TOOLS["console-producer"] == "org.apache.kafka.tools.ConsoleProducer"
    assert broker.TOOLS["topics"] == "org.apache.kafka.tools.TopicCommand"
    assert (
        broker.TOOLS["consumer-groups"]
        == "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
    )


def _need_java() -> None:
    if broker.shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no java")


def test_tool_command_runs_the_main_class_from_the_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_java()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = broker.cache_dir()
    (root / "libs").mkdir(parents=True)
    (root / "libs" / f"kafka-tools-{broker.KAFKA_VERSION}.jar").touch()
    (root / broker.COMPLETE_MARKER).write_text(broker.KAFKA_VERSION)
    cmd = broker.tool_command("kafka-topics.sh", ["--list", "--bootstrap-server", "h:1"])
    main = cmd.index("org.apache.kafka.tools.TopicCommand")
    assert cmd[main + 1 :] == ["--list", "--bootstrap-server", "h:1"]
    assert cmd[cmd.index("-cp") + 1] == str(root / "libs" / "*")
    config = next(a for a in cmd if a.startswith("-Dlog4j2.configurationFile="))
    text = Path(config.split("=", 1)[1]).read_text()
    assert 'target="SYSTEM_ERR"' in text  # stdout stays the tool's output


def test_tool_command_prefers_kafka_home_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_java()
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-3.9.1.jar").touch()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kafka-topics.sh").touch()
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    assert broker.tool_command("topics", ["--list"]) == [
        str(tmp_path / "bin" / "kafka-topics.sh"),
        "--list",
    ]


# --------------------------------------------------------------------------- the registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user cache and data home of our own: the real registry is never touched."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    return tmp_path


@pytest.fixture
def fake_brokers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes that look like our brokers to status() (no Java needed); killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _fake_broker(
    procs: list[subprocess.Popen[bytes]], data_dir: Path, port: int
) -> broker.BrokerInfo:
    """A process whose command line names kafka.Kafka and data_dir's server.properties, with
    the state file `start` writes; registered as `up` does."""
    data_dir.mkdir(parents=True)
    props = data_dir.resolve() / broker.PROPS_FILE
    sleeper = "import time; time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", sleeper, "kafka.Kafka", str(props)])
    procs.append(proc)
    state = {"pid": proc.pid, "bootstrap": f"127.0.0.1:{port}", "version": "test"}
    (data_dir / broker.STATE_FILE).write_text(json.dumps(state))
    info = broker.status(data_dir)
    assert info is not None
    broker.remember(info)
    return info


def test_remembered_brokers_are_found_and_dead_ones_forgotten(
    home: Path, fake_brokers: list[subprocess.Popen[bytes]]
) -> None:
    a = _fake_broker(fake_brokers, home / "a", 19001)
    b = _fake_broker(fake_brokers, home / "b", 19002)
    assert broker.registry_file() == home / "cache" / "interest-stream" / "brokers.json"
    assert [i.data_dir for i in broker.running_brokers()] == [a.data_dir, b.data_dir]
    fake_brokers[0].kill()
    fake_brokers[0].wait(10)
    assert [i.data_dir for i in broker.running_brokers()] == [b.data_dir]
    assert broker.remembered() == [b.data_dir]


def test_down_without_a_data_dir_stops_the_one_running_broker(
    home: Path, fake_brokers: list[subprocess.Popen[bytes]]
) -> None:
    info = _fake_broker(fake_brokers, home / "somewhere" / "kafka", 19003)
    stopped = broker.down()
    assert stopped is not None
    assert (stopped.data_dir, stopped.bootstrap) == (info.data_dir, "127.0.0.1:19003")
    assert fake_brokers[0].wait(10) is not None
    assert broker.remembered() == [] and broker.running_brokers() == []
    assert broker.down() is None


def test_down_with_several_running_stops_none_and_lists_them(
    home: Path, fake_brokers: list[subprocess.Popen[bytes]]
) -> None:
    a = _fake_broker(fake_brokers, home / "a", 19004)
    b = _fake_broker(fake_brokers, home / "b", 19005)
    with pytest.raises(broker.BrokerError) as caught:
        broker.down()
    message = str(caught.value)
    assert str(a.data_dir) in message and str(b.data_dir) in message
    assert "--data-dir" in message and "--all" in message
    assert all(proc.poll() is None for proc in fake_brokers)
    assert broker.down(b.data_dir) == b  # naming one stops exactly that one
    assert [i.data_dir for i in broker.running_brokers()] == [a.data_dir]
    assert [i.data_dir for i in broker.down_all()] == [a.data_dir]
    assert broker.running_brokers() == [] and broker.remembered() == []


def test_a_broken_registry_is_read_as_empty(home: Path) -> None:
    broker.registry_file().parent.mkdir(parents=True)
    broker.registry_file().write_text("{not json")
    assert broker.remembered() == [] and broker.running_brokers() == []
    broker.forget(home / "x")  # no crash either
